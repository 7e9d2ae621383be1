//! The differentiable pieces of the distillation's Gemma 3: a threaded f32 GEMM and the
//! forward and backward of RMSNorm, RoPE, GELU(tanh) and causal GQA attention. Only gradients
//! with respect to activations and the norm gains exist: the linear weights stay fixed.

use rayon::prelude::*;

/// A read-only matrix view: element (i, j) at `p[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub p: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows x cols`.
    pub fn rows(p: &'a [f32], cols: usize) -> View<'a> {
        View { p, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix of `cols` columns.
    pub fn t(p: &'a [f32], cols: usize) -> View<'a> {
        View { p, rs: 1, cs: cols }
    }
    fn at(self, i: usize, j: usize) -> View<'a> {
        View {
            p: &self.p[i * self.rs + j * self.cs..],
            ..self
        }
    }
    fn check(&self, m: usize, n: usize, what: &str) {
        if m > 0 && n > 0 {
            let last = (m - 1) * self.rs + (n - 1) * self.cs;
            assert!(last < self.p.len(), "gemm: {what} view out of bounds");
        }
    }
}

struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint block of C (rows or columns split below).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `C = A·B` (`acc`: `C += A·B`), A `m x k`, B `k x n`, C row-major `m x n` (stride `ldc`),
/// split over rayon's threads along C's longer side.
pub fn gemm(m: usize, k: usize, n: usize, a: View, b: View, c: &mut [f32], ldc: usize, acc: bool) {
    a.check(m, k, "A");
    b.check(k, n, "B");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldc + n <= c.len() && n <= ldc,
        "gemm: C out of bounds"
    );
    let beta = if acc { 1.0 } else { 0.0 };
    let threads = rayon::current_num_threads().max(1);
    let (split_rows, len) = if m >= n { (true, m) } else { (false, n) };
    // blocks of at least 32 rows/columns, about one per thread (more when it divides evenly)
    let block = len.div_ceil(threads).max(32);
    let cp = SendPtr(c.as_mut_ptr());
    let run = |start: usize| {
        let cp = &cp;
        let end = (start + block).min(len);
        let (mm, nn, aa, bb, off) = if split_rows {
            (end - start, n, a.at(start, 0), b, start * ldc)
        } else {
            (m, end - start, a, b.at(0, start), start)
        };
        // SAFETY: views were bounds-checked above for the whole product, so every sub-block
        // lies inside them; the blocks of C are disjoint between tasks.
        unsafe {
            matrixmultiply::sgemm(
                mm,
                k,
                nn,
                1.0,
                aa.p.as_ptr(),
                aa.rs as isize,
                aa.cs as isize,
                bb.p.as_ptr(),
                bb.rs as isize,
                bb.cs as isize,
                beta,
                cp.0.add(off),
                ldc as isize,
                1,
            );
        }
    };
    let starts: Vec<usize> = (0..len).step_by(block).collect();
    if starts.len() == 1 {
        run(0);
    } else {
        starts.into_par_iter().for_each(run);
    }
}

/// `y = x·Wᵀ` for `t` rows of `x` (`t x cols`) and `W` (`rows x cols`, row-major).
pub fn linear(w: &[f32], rows: usize, cols: usize, x: &[f32], t: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * rows];
    gemm(
        t,
        cols,
        rows,
        View::rows(x, cols),
        View::t(w, cols),
        &mut y,
        rows,
        false,
    );
    y
}

/// `dx (+)= dy·W`: the input gradient of [`linear`].
pub fn linear_back(
    w: &[f32],
    rows: usize,
    cols: usize,
    dy: &[f32],
    t: usize,
    dx: &mut [f32],
    acc: bool,
) {
    gemm(
        t,
        rows,
        cols,
        View::rows(dy, rows),
        View::rows(w, cols),
        dx,
        cols,
        acc,
    );
}

/// Gemma's RMSNorm on rows of `w.len()`: `y = x / rms(x) * (1 + w)` (mean square in f64, as
/// the runtime computes it).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut y = x.to_vec();
    y.par_chunks_mut(n).for_each(|row| {
        let inv = inv_rms(row, eps);
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * inv * (1.0 + g);
        }
    });
    y
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / row.len() as f64;
    (1.0 / (ms + eps as f64).sqrt()) as f32
}

/// Backward of [`rms_norm`]: returns `dx`, adds the gain gradient to `dw`.
pub fn rms_norm_back(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dw: &mut [f32]) -> Vec<f32> {
    let n = w.len();
    let rows = x.len() / n;
    // per-row dx, and per-row-chunk partial gain gradients summed at the end
    let mut dx = vec![0f32; x.len()];
    let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let partial: Vec<Vec<f64>> = dx
        .par_chunks_mut(chunk * n)
        .enumerate()
        .map(|(c, dxc)| {
            let mut g = vec![0f64; n];
            for (r, dxr) in dxc.chunks_mut(n).enumerate() {
                let row = c * chunk + r;
                let (xr, dyr) = (&x[row * n..(row + 1) * n], &dy[row * n..(row + 1) * n]);
                let inv = inv_rms(xr, eps);
                let mut dot = 0f64;
                for j in 0..n {
                    let xh = xr[j] * inv;
                    g[j] += (dyr[j] * xh) as f64;
                    dot += ((dyr[j] * (1.0 + w[j])) * xh) as f64;
                }
                let dot = (dot / n as f64) as f32;
                for j in 0..n {
                    dxr[j] = inv * (dyr[j] * (1.0 + w[j]) - xr[j] * inv * dot);
                }
            }
            g
        })
        .collect();
    for g in partial {
        for (d, v) in dw.iter_mut().zip(g) {
            *d += v as f32;
        }
    }
    dx
}

/// sin/cos of every (position, frequency) for positions `0..t`, as the runtime's RoPE computes
/// them (f32, NEOX rotate-half layout).
pub struct Rope {
    half: usize,
    sin: Vec<f32>,
    cos: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, base: f32, scale: f32, t: usize) -> Rope {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0 / base.powf((2 * j) as f32 / head_dim as f32) / scale)
            .collect();
        let (sin, cos) = (0..t)
            .flat_map(|p| inv_freq.iter().map(move |&f| (p as f32 * f).sin_cos()))
            .unzip();
        Rope { half, sin, cos }
    }

    /// Rotates every head of every row of `x` (rows of `heads * head_dim`, row `t` at position
    /// `t`) by its angle; `inverse` rotates back (the backward pass: the rotation is orthogonal).
    pub fn apply(&self, x: &mut [f32], heads: usize, inverse: bool) {
        let (h, d) = (self.half, 2 * self.half);
        let sign = if inverse { -1.0 } else { 1.0 };
        x.par_chunks_mut(heads * d)
            .enumerate()
            .for_each(|(t, row)| {
                let (sin, cos) = (&self.sin[t * h..(t + 1) * h], &self.cos[t * h..(t + 1) * h]);
                for head in row.chunks_exact_mut(d) {
                    let (a, b) = head.split_at_mut(h);
                    for j in 0..h {
                        let (x0, x1, s) = (a[j], b[j], sign * sin[j]);
                        a[j] = x0 * cos[j] - x1 * s;
                        b[j] = x1 * cos[j] + x0 * s;
                    }
                }
            });
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU(tanh) and its derivative at `x`.
pub fn gelu_and_slope(x: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    let th = u.tanh();
    let y = 0.5 * x * (1.0 + th);
    let dy = 0.5 * (1.0 + th)
        + 0.5 * x * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    (y, dy)
}

/// Shapes of one causal GQA attention over positions `0..t`.
#[derive(Clone, Copy)]
pub struct Attn {
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Sliding layers: query `i` sees keys `j` with `i - j < window`.
    pub window: Option<usize>,
}

impl Attn {
    fn kv_of(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }
    fn visible(&self, i: usize, j: usize) -> bool {
        j <= i && self.window.is_none_or(|w| i - j < w)
    }

    /// `o` (`t x heads*hd`) and the attention probabilities (`heads x t x t`) of `q`, `k`, `v`
    /// (rows of `heads*hd`, `kv_heads*hd`, `kv_heads*hd`).
    pub fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (t, hd) = (self.t, self.head_dim);
        let (qw, kw) = (self.heads * hd, self.kv_heads * hd);
        let mut p = vec![0f32; self.heads * t * t];
        let mut o = vec![0f32; t * qw];
        for h in 0..self.heads {
            let g = self.kv_of(h);
            let ph = &mut p[h * t * t..(h + 1) * t * t];
            gemm(
                t,
                hd,
                t,
                View::rows(&q[h * hd..], qw),
                View::t(&k[g * hd..], kw),
                ph,
                t,
                false,
            );
            ph.par_chunks_mut(t).enumerate().for_each(|(i, row)| {
                let mut m = f32::NEG_INFINITY;
                for (j, s) in row.iter_mut().enumerate() {
                    if self.visible(i, j) {
                        *s *= self.scale;
                        m = m.max(*s);
                    }
                }
                let mut sum = 0f32;
                for (j, s) in row.iter_mut().enumerate() {
                    *s = if self.visible(i, j) {
                        (*s - m).exp()
                    } else {
                        0.0
                    };
                    sum += *s;
                }
                row.iter_mut().for_each(|s| *s /= sum);
            });
            gemm(
                t,
                t,
                hd,
                View::rows(ph, t),
                View::rows(&v[g * hd..], kw),
                &mut o[h * hd..],
                qw,
                false,
            );
        }
        (o, p)
    }

    /// Backward of [`Attn::forward`]: `(dq, dk, dv)` from `do_` and the forward's `p`.
    pub fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        p: &[f32],
        do_: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (t, hd) = (self.t, self.head_dim);
        let (qw, kw) = (self.heads * hd, self.kv_heads * hd);
        let mut dq = vec![0f32; t * qw];
        let mut dk = vec![0f32; t * kw];
        let mut dv = vec![0f32; t * kw];
        let mut ds = vec![0f32; t * t];
        for h in 0..self.heads {
            let g = self.kv_of(h);
            let ph = &p[h * t * t..(h + 1) * t * t];
            // dP = dO·Vᵀ, then dS = P ⊙ (dP - rowsum(P ⊙ dP)), times the score scale
            gemm(
                t,
                hd,
                t,
                View::rows(&do_[h * hd..], qw),
                View::t(&v[g * hd..], kw),
                &mut ds,
                t,
                false,
            );
            ds.par_chunks_mut(t)
                .zip(ph.par_chunks(t))
                .for_each(|(d, pr)| {
                    let dot: f32 = d.iter().zip(pr).map(|(a, b)| a * b).sum();
                    for (dv, &pv) in d.iter_mut().zip(pr) {
                        *dv = pv * (*dv - dot) * self.scale;
                    }
                });
            gemm(
                t,
                t,
                hd,
                View::rows(&ds, t),
                View::rows(&k[g * hd..], kw),
                &mut dq[h * hd..],
                qw,
                false,
            );
            gemm(
                t,
                t,
                hd,
                View::t(&ds, t),
                View::rows(&q[h * hd..], qw),
                &mut dk[g * hd..],
                kw,
                true,
            );
            gemm(
                t,
                t,
                hd,
                View::t(ph, t),
                View::rows(&do_[h * hd..], qw),
                &mut dv[g * hd..],
                kw,
                true,
            );
        }
        (dq, dk, dv)
    }
}
