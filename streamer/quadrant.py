"""The circumplex regions (quadrants) events name, from smoothed valence and arousal."""

from __future__ import annotations

import math

#: Circumplex sectors in the order :func:`quadrant` uses: 45 degrees each, counter-clockwise from
#: positive valence. web_dashboard/static/app.js mirrors this list (SECTORS) to draw them.
SECTORS = ("HAPPY", "EXCITED", "TENSE", "ANGRY", "SAD", "BORED", "CALM", "CONTENT")
#: Every value :func:`quadrant` returns: the eight sectors, then the central zone.
QUADRANTS = (*SECTORS, "NEUTRAL")
#: Points closer than this to the origin are NEUTRAL rather than a sector: near the origin the
#: angle, and so the sector, flips with noise. On the default model the smoothed values of neutral
#: RAVDESS speech mostly lie within 0.2 of the origin. Calm speech of the 6 test actors (calm clips
#: only): for 4 of them the mean smoothed radius is 0.30-0.46, outside the disc, but the other two
#: read close to neutral (mean radius 0.14 and 0.16) and land inside it; 0.25 keeps most neutral
#: speech in and most calm speech out, not all of it. web_dashboard/static/app.js mirrors it
#: (NEUTRAL_RADIUS) to draw the disc.
NEUTRAL_RADIUS = 0.25


def quadrant(valence: float | None, arousal: float | None) -> str | None:
    """Name the circumplex region of a (valence, arousal) point in [-1, 1]^2.

    Points closer than :data:`NEUTRAL_RADIUS` to the origin are NEUTRAL. The rest of the plane
    is cut into eight 45-degree sectors around the origin, counter-clockwise from positive
    valence (:data:`SECTORS`): HAPPY (pleasant, slightly aroused), EXCITED (pleasant, highly
    aroused), TENSE (unpleasant, highly aroused), ANGRY (unpleasant, aroused), SAD (unpleasant,
    slightly deactivated), BORED (deactivated), CALM (deactivated but pleasant), CONTENT
    (pleasant, relaxed). ``None`` for either coordinate gives ``None``.
    """
    if valence is None or arousal is None:
        return None
    if math.hypot(valence, arousal) < NEUTRAL_RADIUS:
        return "NEUTRAL"
    angle = math.degrees(math.atan2(arousal, valence)) % 360
    return SECTORS[int(angle // 45) % 8]
