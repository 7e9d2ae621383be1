//! mixq-calibration: sample text to token batches, activation observers (per-channel second moments, Hessians).
