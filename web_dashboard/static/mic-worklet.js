// AudioWorklet: browser microphone -> 16 kHz mono s16le chunks for /ingest.
// Runs on the audio thread, so it only filters, resamples and posts; the page does the network.
const OUT_RATE = 16000;
const CHUNK = 320; // 20 ms at 16 kHz
const HALF_TAPS = 16;

class Resampler16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    // Low-pass below the new Nyquist (windowed sinc) so 48 kHz speech does not alias.
    const cutoff = Math.min(1, OUT_RATE / sampleRate) * 0.9;
    this.taps = new Float32Array(2 * HALF_TAPS + 1);
    let sum = 0;
    for (let i = -HALF_TAPS; i <= HALF_TAPS; i++) {
      const x = i * cutoff;
      const sinc = i === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const hann = 0.5 + 0.5 * Math.cos((Math.PI * i) / (HALF_TAPS + 1));
      this.taps[i + HALF_TAPS] = sinc * hann;
      sum += sinc * hann;
    }
    for (let i = 0; i < this.taps.length; i++) this.taps[i] /= sum;
    this.history = new Float32Array(2 * HALF_TAPS + 1); // ring of recent input samples
    this.hpos = 0;
    this.filtered = [0, 0]; // last two filtered samples, for interpolation
    this.pos = 0; // position of the next output, in input samples relative to filtered[1]
    this.out = new Int16Array(CHUNK);
    this.n = 0;
  }

  push(x) {
    this.history[this.hpos] = x;
    this.hpos = (this.hpos + 1) % this.history.length;
    let y = 0;
    for (let i = 0; i < this.taps.length; i++) {
      y += this.taps[i] * this.history[(this.hpos + i) % this.history.length];
    }
    this.filtered[0] = this.filtered[1];
    this.filtered[1] = y;
    this.pos -= 1;
    while (this.pos <= 0) { // an output falls between the last two filtered samples
      const frac = 1 + this.pos;
      const v = this.filtered[0] + (this.filtered[1] - this.filtered[0]) * frac;
      this.out[this.n++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
      if (this.n === CHUNK) {
        this.port.postMessage(this.out.buffer, [this.out.buffer]);
        this.out = new Int16Array(CHUNK);
        this.n = 0;
      }
      this.pos += this.step;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const len = channels[0].length;
      for (let i = 0; i < len; i++) {
        let x = 0;
        for (const ch of channels) x += ch[i];
        this.push(x / channels.length);
      }
    }
    return true;
  }
}

registerProcessor("resampler-16k", Resampler16k);
