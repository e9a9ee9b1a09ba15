//! Agreement: how two answers of a kernel are compared, per output binding (SPEC §9).
//!
//! A pure decision — two byte buffers in, agree or the first disagreement out. Exact
//! comparison (the default) rejects every float variant that reassociates a sum or
//! fuses a multiply-add; [`Agreement::Float`] compares elementwise within a tolerance.
//! This module never runs a kernel and never looks at which variant is which.

use std::fmt;
use std::sync::Arc;

/// A float element type a [`Agreement::Float`] reads the buffers as (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FloatElem {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    BF16,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
}

impl FloatElem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatElem::F16 | FloatElem::BF16 => 2,
            FloatElem::F32 => 4,
            FloatElem::F64 => 8,
        }
    }

    /// Element `i` of `bytes` as an f64 (exact for every type here) and its bits as
    /// an integer ordered like the floats (for ulp distances).
    fn read(self, bytes: &[u8], i: usize) -> (f64, i64) {
        let at = &bytes[i * self.size()..(i + 1) * self.size()];
        match self {
            FloatElem::F16 => {
                let bits = u16::from_le_bytes([at[0], at[1]]);
                (f16_to_f64(bits), ordered(u64::from(bits), 16))
            }
            FloatElem::BF16 => {
                let bits = u16::from_le_bytes([at[0], at[1]]);
                let value = f32::from_bits(u32::from(bits) << 16);
                (f64::from(value), ordered(u64::from(bits), 16))
            }
            FloatElem::F32 => {
                let bits = u32::from_le_bytes([at[0], at[1], at[2], at[3]]);
                (
                    f64::from(f32::from_bits(bits)),
                    ordered(u64::from(bits), 32),
                )
            }
            FloatElem::F64 => {
                let mut word = [0u8; 8];
                word.copy_from_slice(at);
                let bits = u64::from_le_bytes(word);
                (f64::from_bits(bits), ordered(bits, 64))
            }
        }
    }
}

/// The sign-magnitude bits of a `width`-bit float as an integer whose order is the
/// floats' order (+0 and −0 both 0), so adjacent floats differ by 1.
fn ordered(bits: u64, width: u32) -> i64 {
    let sign = bits >> (width - 1) & 1;
    let magnitude = (bits & ((1u64 << (width - 1)) - 1)) as i64;
    if sign == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// binary16 to f64, exactly (normals, subnormals, infinities, NaN).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// A user's comparison: true when the two answers (conservative first) agree.
pub type CustomAgreement = dyn Fn(&[u8], &[u8]) -> bool + Send + Sync;

/// How two answers of one output binding are compared.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Agreement {
    /// Byte for byte (the default).
    #[default]
    Exact,
    /// Elementwise as floats of type `elem`: two elements agree when they are equal
    /// (+0 and −0 included), both NaN, or within **any** of the tolerances — at most
    /// `max_ulps` representable values apart, `|a − b| ≤ abs`, or `|a − b| ≤ rel ×
    /// max(|a|, |b|)`. An infinity agrees only with the same infinity; a NaN only with
    /// a NaN. Buffers of different lengths, or of a length that is not a whole number
    /// of elements, disagree.
    Float {
        /// The element type.
        elem: FloatElem,
        /// Units in the last place.
        max_ulps: u32,
        /// Relative tolerance.
        rel: f64,
        /// Absolute tolerance.
        abs: f64,
    },
    /// The application's own comparison (conservative answer first).
    Custom(Arc<CustomAgreement>),
}

impl fmt::Debug for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Agreement::Exact => f.write_str("Exact"),
            Agreement::Float {
                elem,
                max_ulps,
                rel,
                abs,
            } => f
                .debug_struct("Float")
                .field("elem", elem)
                .field("max_ulps", max_ulps)
                .field("rel", rel)
                .field("abs", abs)
                .finish(),
            Agreement::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Where and by how much two answers disagree: what a mismatch event reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Disagreement {
    /// Index of the first element that disagrees (bytes for `Exact` and `Custom`,
    /// elements for `Float`); `None` when the lengths differ or a custom comparison
    /// refused without saying where.
    pub element: Option<usize>,
    /// The two values there, as text (conservative, speculative).
    pub values: Option<(String, String)>,
    /// How far apart they are: `|a − b|` for floats, 1 for differing bytes; `None`
    /// when not a number (NaN against a number, lengths that differ).
    pub difference: Option<f64>,
    /// What the comparison found, in words.
    pub detail: String,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl Agreement {
    /// Elementwise f32 within `max_ulps` units in the last place (no rel/abs slack).
    pub fn f32_ulps(max_ulps: u32) -> Self {
        Agreement::Float {
            elem: FloatElem::F32,
            max_ulps,
            rel: 0.0,
            abs: 0.0,
        }
    }

    /// Whether the tolerance reads the buffers as floats.
    pub fn is_float(&self) -> bool {
        matches!(self, Agreement::Float { .. })
    }

    /// Compares `conservative` and `speculative`; `Err` says where they first differ.
    pub fn compare(&self, conservative: &[u8], speculative: &[u8]) -> Result<(), Disagreement> {
        let lengths = || Disagreement {
            element: None,
            values: None,
            difference: None,
            detail: format!(
                "the answers are {} and {} bytes long",
                conservative.len(),
                speculative.len()
            ),
        };
        match self {
            Agreement::Exact => {
                if conservative.len() != speculative.len() {
                    return Err(lengths());
                }
                match conservative
                    .iter()
                    .zip(speculative)
                    .position(|(a, b)| a != b)
                {
                    None => Ok(()),
                    Some(at) => Err(Disagreement {
                        element: Some(at),
                        values: Some((
                            format!("{:#04x}", conservative[at]),
                            format!("{:#04x}", speculative[at]),
                        )),
                        difference: Some(1.0),
                        detail: format!(
                            "byte {at} differs ({:#04x} vs {:#04x})",
                            conservative[at], speculative[at]
                        ),
                    }),
                }
            }
            Agreement::Custom(agree) => {
                if agree(conservative, speculative) {
                    Ok(())
                } else {
                    Err(Disagreement {
                        element: None,
                        values: None,
                        difference: None,
                        detail: "the kernel's own comparison refused the answers".into(),
                    })
                }
            }
            Agreement::Float {
                elem,
                max_ulps,
                rel,
                abs,
            } => {
                let size = elem.size();
                if conservative.len() != speculative.len() || conservative.len() % size != 0 {
                    return Err(lengths());
                }
                for i in 0..conservative.len() / size {
                    let (a, a_ord) = elem.read(conservative, i);
                    let (b, b_ord) = elem.read(speculative, i);
                    let agree = if a.is_nan() || b.is_nan() {
                        a.is_nan() && b.is_nan()
                    } else if a.is_infinite() || b.is_infinite() {
                        a == b
                    } else {
                        let diff = (a - b).abs();
                        a == b
                            || diff <= *abs
                            || diff <= rel * a.abs().max(b.abs())
                            || a_ord.abs_diff(b_ord) <= u64::from(*max_ulps)
                    };
                    if !agree {
                        let difference = (a - b).abs();
                        return Err(Disagreement {
                            element: Some(i),
                            values: Some((a.to_string(), b.to_string())),
                            difference: (!difference.is_nan()).then_some(difference),
                            detail: format!(
                                "{elem:?} element {i} differs: {a} vs {b} (|difference| {difference:e}, {} ulps; \
                                 allowed {max_ulps} ulps, rel {rel:e}, abs {abs:e})",
                                a_ord.abs_diff(b_ord)
                            ),
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn exact_names_the_first_differing_byte() {
        assert!(Agreement::Exact.compare(&[1, 2, 3], &[1, 2, 3]).is_ok());
        let d = Agreement::Exact
            .compare(&[1, 2, 3], &[1, 9, 3])
            .unwrap_err();
        assert_eq!(d.element, Some(1));
        assert_eq!(d.difference, Some(1.0));
        assert_eq!(
            Agreement::Exact.compare(&[1], &[1, 2]).unwrap_err().element,
            None
        );
    }

    #[test]
    fn ulps_count_representable_values_across_zero() {
        let one = 1.0f32;
        let next = f32::from_bits(one.to_bits() + 1);
        let two_up = f32::from_bits(one.to_bits() + 2);
        let a = Agreement::f32_ulps(1);
        assert!(a.compare(&f32s(&[one]), &f32s(&[next])).is_ok());
        let d = a
            .compare(&f32s(&[one, one]), &f32s(&[one, two_up]))
            .unwrap_err();
        assert_eq!(d.element, Some(1));
        assert!(d.difference.unwrap() > 0.0);
        // The smallest subnormals either side of zero are two ulps apart; +0 == -0.
        let tiny = f32::from_bits(1);
        assert!(Agreement::f32_ulps(2)
            .compare(&f32s(&[tiny]), &f32s(&[-tiny]))
            .is_ok());
        assert!(Agreement::f32_ulps(1)
            .compare(&f32s(&[tiny]), &f32s(&[-tiny]))
            .is_err());
        assert!(Agreement::f32_ulps(0)
            .compare(&f32s(&[0.0]), &f32s(&[-0.0]))
            .is_ok());
    }

    #[test]
    fn nan_agrees_with_nan_and_infinity_with_the_same_infinity_only() {
        let loose = Agreement::Float {
            elem: FloatElem::F32,
            max_ulps: u32::MAX,
            rel: 1e9,
            abs: 1e30,
        };
        assert!(loose
            .compare(&f32s(&[f32::NAN]), &f32s(&[-f32::NAN]))
            .is_ok());
        assert!(loose.compare(&f32s(&[f32::NAN]), &f32s(&[1.0])).is_err());
        assert!(loose
            .compare(&f32s(&[f32::INFINITY]), &f32s(&[f32::INFINITY]))
            .is_ok());
        assert!(loose
            .compare(&f32s(&[f32::INFINITY]), &f32s(&[f32::MAX]))
            .is_err());
        assert!(loose
            .compare(&f32s(&[f32::INFINITY]), &f32s(&[f32::NEG_INFINITY]))
            .is_err());
    }

    #[test]
    fn rel_and_abs_tolerances_each_suffice() {
        let rel = Agreement::Float {
            elem: FloatElem::F32,
            max_ulps: 0,
            rel: 1e-3,
            abs: 0.0,
        };
        assert!(rel.compare(&f32s(&[1000.0]), &f32s(&[1000.5])).is_ok());
        assert!(rel.compare(&f32s(&[1000.0]), &f32s(&[1002.0])).is_err());
        let abs = Agreement::Float {
            elem: FloatElem::F32,
            max_ulps: 0,
            rel: 0.0,
            abs: 0.25,
        };
        assert!(abs.compare(&f32s(&[1000.0]), &f32s(&[1000.25])).is_ok());
        assert!(abs.compare(&f32s(&[1000.0]), &f32s(&[1000.5])).is_err());
    }

    #[test]
    fn half_bfloat_and_double_elements_read_exactly() {
        // f16: 1.0 = 0x3c00, next = 0x3c01; 65504 = 0x7bff; subnormal 0x0001 = 2^-24.
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0xfc00), f64::NEG_INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
        let half = |bits: &[u16]| {
            bits.iter()
                .flat_map(|b| b.to_le_bytes())
                .collect::<Vec<_>>()
        };
        let a = Agreement::Float {
            elem: FloatElem::F16,
            max_ulps: 1,
            rel: 0.0,
            abs: 0.0,
        };
        assert!(a.compare(&half(&[0x3c00]), &half(&[0x3c01])).is_ok());
        assert!(a.compare(&half(&[0x3c00]), &half(&[0x3c02])).is_err());
        let bf = Agreement::Float {
            elem: FloatElem::BF16,
            max_ulps: 0,
            rel: 0.0,
            abs: 0.0,
        };
        assert!(bf.compare(&half(&[0x3f80]), &half(&[0x3f81])).is_err());
        let d = Agreement::Float {
            elem: FloatElem::F64,
            max_ulps: 1,
            rel: 0.0,
            abs: 0.0,
        };
        let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        let next = f64::from_bits(1.0f64.to_bits() + 1);
        assert!(d.compare(&f64s(&[1.0]), &f64s(&[next])).is_ok());
        assert!(d.compare(&f64s(&[1.0]), &[0u8; 4]).is_err(), "length");
    }

    #[test]
    fn a_custom_comparison_decides() {
        let close = Agreement::Custom(Arc::new(|a: &[u8], b: &[u8]| a.len() == b.len()));
        assert!(close.compare(&[1, 2], &[3, 4]).is_ok());
        assert!(close.compare(&[1, 2], &[3]).is_err());
    }
}
