//! PNG and JPEG pictures to 8-bit pixels, bounded: the size is read from the header and checked
//! before any pixel is decoded, so a small file claiming a huge picture costs nothing. Used by
//! the image transformer and by models that take encoded pictures ([`crate::encoded_images`]).

use image::{DynamicImage, ImageReader};

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Invalid(String),
    TooManyPixels { width: u32, height: u32 },
}

/// Decodes JPEG or PNG into 8-bit pixels with the channels the model wants (1 = grey, 3 = RGB),
/// reading the header first: an image over `max_pixels` is refused before it is decoded.
/// Decodes `bytes` to `channels` (1 grey, 3 RGB) interleaved pixels: `(pixels, height, width)`.
pub fn decode(
    bytes: &[u8],
    channels: u32,
    max_pixels: u64,
) -> Result<(Vec<u8>, u32, u32), DecodeError> {
    let invalid = DecodeError::Invalid;
    let reader = || {
        let r = ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| invalid(format!("cannot read the image: {e}")))?;
        match r.format() {
            Some(_) => Ok(r),
            None => Err(invalid("not a JPEG or PNG image".into())),
        }
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| invalid(format!("cannot read the image: {e}")))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooManyPixels { width, height });
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    reader.limits(limits);
    let img: DynamicImage = reader
        .decode()
        .map_err(|e| invalid(format!("cannot decode the image: {e}")))?;
    let (w, h) = (img.width(), img.height());
    let pixels = match channels {
        1 => img.into_luma8().into_raw(),
        3 => img.into_rgb8().into_raw(),
        n => {
            return Err(invalid(format!(
                "the model wants {n} channels; only 1 or 3 are supported"
            )));
        }
    };
    Ok((pixels, h, w))
}
