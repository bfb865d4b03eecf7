//! torchvision's Inception v3 in eval mode (no auxiliary classifier, `transform_input=False`),
//! built from a torchvision state dict (`Conv2d_1a_3x3`, `Mixed_5b`, ..., `fc`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

use super::layers::{ConvBn, ConvShape, avg_pool_3x3_same, global_avg_pool};

pub const FEATURES: usize = 2048;
const EPS: f64 = 1e-3;

/// `BasicConv2d`: convolution + batch norm (eps 0.001) + ReLU.
struct Basic(ConvBn);

impl Basic {
    fn new(vb: VarBuilder<'_>, shape: ConvShape) -> Result<Self> {
        Ok(Basic(ConvBn::new(vb.pp("conv"), vb.pp("bn"), shape, EPS)?))
    }

    fn k(
        vb: VarBuilder<'_>,
        inp: usize,
        out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::new(vb, ConvShape::square(inp, out, k, stride, padding))
    }
}

impl Module for Basic {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)?.relu()
    }
}

/// Runs convolutions one after the other.
fn chain(convs: &[Basic], x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    for c in convs {
        y = c.forward(&y)?;
    }
    Ok(y)
}

fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    x.max_pool2d_with_stride(3, 2)
}

/// The five kinds of mixed block (torchvision's InceptionA..E), each a list of branches whose
/// outputs are concatenated along the channels.
enum Mixed {
    A {
        b1: Basic,
        b5: [Basic; 2],
        b3: [Basic; 3],
        pool: Basic,
    },
    B {
        b3: Basic,
        b3dbl: [Basic; 3],
    },
    C {
        b1: Basic,
        b7: [Basic; 3],
        b7dbl: [Basic; 5],
        pool: Basic,
    },
    D {
        b3: [Basic; 2],
        b7x3: [Basic; 4],
    },
    E {
        b1: Basic,
        b3_1: Basic,
        b3_2: [Basic; 2],
        b3dbl_12: [Basic; 2],
        b3dbl_3: [Basic; 2],
        pool: Basic,
    },
}

impl Mixed {
    fn a(vb: VarBuilder<'_>, inp: usize, pool_features: usize) -> Result<Self> {
        Ok(Mixed::A {
            b1: Basic::k(vb.pp("branch1x1"), inp, 64, 1, 1, 0)?,
            b5: [
                Basic::k(vb.pp("branch5x5_1"), inp, 48, 1, 1, 0)?,
                Basic::k(vb.pp("branch5x5_2"), 48, 64, 5, 1, 2)?,
            ],
            b3: [
                Basic::k(vb.pp("branch3x3dbl_1"), inp, 64, 1, 1, 0)?,
                Basic::k(vb.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
                Basic::k(vb.pp("branch3x3dbl_3"), 96, 96, 3, 1, 1)?,
            ],
            pool: Basic::k(vb.pp("branch_pool"), inp, pool_features, 1, 1, 0)?,
        })
    }

    fn b(vb: VarBuilder<'_>, inp: usize) -> Result<Self> {
        Ok(Mixed::B {
            b3: Basic::k(vb.pp("branch3x3"), inp, 384, 3, 2, 0)?,
            b3dbl: [
                Basic::k(vb.pp("branch3x3dbl_1"), inp, 64, 1, 1, 0)?,
                Basic::k(vb.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
                Basic::k(vb.pp("branch3x3dbl_3"), 96, 96, 3, 2, 0)?,
            ],
        })
    }

    fn c(vb: VarBuilder<'_>, inp: usize, c7: usize) -> Result<Self> {
        let s = |name: &str, i, o, kh, kw| Basic::new(vb.pp(name), ConvShape::same(i, o, kh, kw));
        Ok(Mixed::C {
            b1: s("branch1x1", inp, 192, 1, 1)?,
            b7: [
                s("branch7x7_1", inp, c7, 1, 1)?,
                s("branch7x7_2", c7, c7, 1, 7)?,
                s("branch7x7_3", c7, 192, 7, 1)?,
            ],
            b7dbl: [
                s("branch7x7dbl_1", inp, c7, 1, 1)?,
                s("branch7x7dbl_2", c7, c7, 7, 1)?,
                s("branch7x7dbl_3", c7, c7, 1, 7)?,
                s("branch7x7dbl_4", c7, c7, 7, 1)?,
                s("branch7x7dbl_5", c7, 192, 1, 7)?,
            ],
            pool: s("branch_pool", inp, 192, 1, 1)?,
        })
    }

    fn d(vb: VarBuilder<'_>, inp: usize) -> Result<Self> {
        let s = |name: &str, i, o, kh, kw| Basic::new(vb.pp(name), ConvShape::same(i, o, kh, kw));
        Ok(Mixed::D {
            b3: [
                s("branch3x3_1", inp, 192, 1, 1)?,
                Basic::k(vb.pp("branch3x3_2"), 192, 320, 3, 2, 0)?,
            ],
            b7x3: [
                s("branch7x7x3_1", inp, 192, 1, 1)?,
                s("branch7x7x3_2", 192, 192, 1, 7)?,
                s("branch7x7x3_3", 192, 192, 7, 1)?,
                Basic::k(vb.pp("branch7x7x3_4"), 192, 192, 3, 2, 0)?,
            ],
        })
    }

    fn e(vb: VarBuilder<'_>, inp: usize) -> Result<Self> {
        let s = |name: &str, i, o, kh, kw| Basic::new(vb.pp(name), ConvShape::same(i, o, kh, kw));
        Ok(Mixed::E {
            b1: s("branch1x1", inp, 320, 1, 1)?,
            b3_1: s("branch3x3_1", inp, 384, 1, 1)?,
            b3_2: [
                s("branch3x3_2a", 384, 384, 1, 3)?,
                s("branch3x3_2b", 384, 384, 3, 1)?,
            ],
            b3dbl_12: [
                s("branch3x3dbl_1", inp, 448, 1, 1)?,
                s("branch3x3dbl_2", 448, 384, 3, 3)?,
            ],
            b3dbl_3: [
                s("branch3x3dbl_3a", 384, 384, 1, 3)?,
                s("branch3x3dbl_3b", 384, 384, 3, 1)?,
            ],
            pool: s("branch_pool", inp, 192, 1, 1)?,
        })
    }
}

impl Module for Mixed {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let branches = match self {
            Mixed::A { b1, b5, b3, pool } => vec![
                b1.forward(x)?,
                chain(b5, x)?,
                chain(b3, x)?,
                pool.forward(&avg_pool_3x3_same(x)?)?,
            ],
            Mixed::B { b3, b3dbl } => vec![b3.forward(x)?, chain(b3dbl, x)?, max_pool_3x3_s2(x)?],
            Mixed::C {
                b1,
                b7,
                b7dbl,
                pool,
            } => vec![
                b1.forward(x)?,
                chain(b7, x)?,
                chain(b7dbl, x)?,
                pool.forward(&avg_pool_3x3_same(x)?)?,
            ],
            Mixed::D { b3, b7x3 } => vec![chain(b3, x)?, chain(b7x3, x)?, max_pool_3x3_s2(x)?],
            Mixed::E {
                b1,
                b3_1,
                b3_2,
                b3dbl_12,
                b3dbl_3,
                pool,
            } => {
                let y3 = b3_1.forward(x)?;
                let y3dbl = chain(b3dbl_12, x)?;
                vec![
                    b1.forward(x)?,
                    b3_2[0].forward(&y3)?,
                    b3_2[1].forward(&y3)?,
                    b3dbl_3[0].forward(&y3dbl)?,
                    b3dbl_3[1].forward(&y3dbl)?,
                    pool.forward(&avg_pool_3x3_same(x)?)?,
                ]
            }
        };
        Tensor::cat(&branches, 1)
    }
}

pub struct InceptionV3 {
    stem: Vec<Basic>,
    mixed: Vec<Mixed>,
    fc: Linear,
}

impl InceptionV3 {
    pub fn new(vb: VarBuilder<'_>, classes: usize) -> Result<Self> {
        let stem = vec![
            Basic::k(vb.pp("Conv2d_1a_3x3"), 3, 32, 3, 2, 0)?,
            Basic::k(vb.pp("Conv2d_2a_3x3"), 32, 32, 3, 1, 0)?,
            Basic::k(vb.pp("Conv2d_2b_3x3"), 32, 64, 3, 1, 1)?,
            Basic::k(vb.pp("Conv2d_3b_1x1"), 64, 80, 1, 1, 0)?,
            Basic::k(vb.pp("Conv2d_4a_3x3"), 80, 192, 3, 1, 0)?,
        ];
        let mixed = vec![
            Mixed::a(vb.pp("Mixed_5b"), 192, 32)?,
            Mixed::a(vb.pp("Mixed_5c"), 256, 64)?,
            Mixed::a(vb.pp("Mixed_5d"), 288, 64)?,
            Mixed::b(vb.pp("Mixed_6a"), 288)?,
            Mixed::c(vb.pp("Mixed_6b"), 768, 128)?,
            Mixed::c(vb.pp("Mixed_6c"), 768, 160)?,
            Mixed::c(vb.pp("Mixed_6d"), 768, 160)?,
            Mixed::c(vb.pp("Mixed_6e"), 768, 192)?,
            Mixed::d(vb.pp("Mixed_7a"), 768)?,
            Mixed::e(vb.pp("Mixed_7b"), 1280)?,
            Mixed::e(vb.pp("Mixed_7c"), 2048)?,
        ];
        let fc = linear(FEATURES, classes, vb.pp("fc"))?;
        Ok(InceptionV3 { stem, mixed, fc })
    }
}

impl Module for InceptionV3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = chain(&self.stem[..3], x)?;
        let x = max_pool_3x3_s2(&x)?;
        let x = chain(&self.stem[3..], &x)?;
        let mut x = max_pool_3x3_s2(&x)?;
        for m in &self.mixed {
            x = m.forward(&x)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}
