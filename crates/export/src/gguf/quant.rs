//! Encoding f32 values as ggml stores them: f32, f16, and q8_0 (blocks of 32 values: an f16 scale `d`
//! = max|x| / 127, then 32 signed bytes `round(x / d)`, as ggml's reference quantizer does).

use half::f16;

/// Values per q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// q8_0 blocks of `values`, whose length must be a multiple of [`Q8_0_BLOCK`].
pub fn q8_0_bytes(values: &[f32]) -> Vec<u8> {
    assert!(
        values.len().is_multiple_of(Q8_0_BLOCK),
        "q8_0 needs whole blocks"
    );
    let mut out = Vec::with_capacity(values.len() / Q8_0_BLOCK * 34);
    for block in values.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
    }
    out
}

/// The values q8_0 blocks stand for (what llama.cpp computes with).
pub fn q8_0_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2 + Q8_0_BLOCK)
        .flat_map(|b| {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            b[2..].iter().map(move |&q| q as i8 as f32 * d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_keeps_each_value_within_half_a_step_of_its_block_scale() {
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
            .collect();
        let bytes = q8_0_bytes(&values);
        assert_eq!(bytes.len(), 2 * 34);
        let back = q8_0_values(&bytes);
        for (block, back) in values.chunks(32).zip(back.chunks(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in block.iter().zip(back) {
                assert!((a - b).abs() <= step * 0.5 + step * 1e-3, "{a} {b} {step}");
            }
        }
        // The largest value of a block is exact up to the f16 scale.
        assert_eq!(bytes[2] as i8, -127);
        assert_eq!(q8_0_values(&q8_0_bytes(&[0.0; 32])), vec![0.0; 32]);
    }

    #[test]
    fn f16_and_f32_bytes_are_little_endian() {
        assert_eq!(f32_bytes(&[1.0]), 1f32.to_le_bytes());
        assert_eq!(f16_bytes(&[1.0, -2.0]), vec![0x00, 0x3c, 0x00, 0xc0]);
    }
}
