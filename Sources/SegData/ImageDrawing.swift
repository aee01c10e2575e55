// Drawing on 8-bit RGB images for the sample grids a run writes (image | truth | prediction):
// filled rectangles, short labels in a built-in 5x7 pixel font (lower-case letters, digits and a
// few signs; no font library), and the outline of a label map (pixels whose 4-neighbourhood holds
// another label), which the grid draws over the input image.

extension Image8 {
    /// Fills the rectangle [x, x + width) x [y, y + height), clipped to the image, with `rgb`.
    public mutating func fill(x: Int, y: Int, width: Int, height: Int, rgb: (UInt8, UInt8, UInt8)) {
        precondition(channels == 3, "fill: an RGB image")
        for row in max(0, y)..<min(self.height, y + height) {
            for column in max(0, x)..<min(self.width, x + width) {
                let o = (row * self.width + column) * 3
                pixels[o] = rgb.0; pixels[o + 1] = rgb.1; pixels[o + 2] = rgb.2
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y) in the 5x7 font, one pixel between glyphs,
    /// clipped to the image. Characters without a glyph are drawn as a blank.
    public mutating func draw(text: String, x: Int, y: Int, rgb: (UInt8, UInt8, UInt8)) {
        precondition(channels == 3, "draw: an RGB image")
        var left = x
        for character in text {
            if let rows = PixelFont.glyphs[character] {
                for (r, bits) in rows.enumerated() {
                    for c in 0..<5 where bits & (1 << (4 - c)) != 0 {
                        let px = left + c, py = y + r
                        guard px >= 0, px < width, py >= 0, py < height else { continue }
                        let o = (py * width + px) * 3
                        pixels[o] = rgb.0; pixels[o + 1] = rgb.1; pixels[o + 2] = rgb.2
                    }
                }
            }
            left += PixelFont.advance
        }
    }
}

/// The 5x7 font of `Image8.draw(text:)`: each glyph is seven rows of five bits, the high bit left.
public enum PixelFont {
    /// Glyph width plus the gap after it, in pixels.
    public static let advance = 6
    /// Glyph height in pixels.
    public static let height = 7

    /// The width `text` takes, without the gap after its last glyph.
    public static func width(_ text: String) -> Int { max(0, text.count * advance - 1) }

    static let glyphs: [Character: [UInt8]] = [
        "a": [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        "b": [0b10000, 0b10000, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110],
        "c": [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        "d": [0b00001, 0b00001, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111],
        "e": [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        "g": [0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        "h": [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        "i": [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        "l": [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        "m": [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        "n": [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        "o": [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        "p": [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000],
        "r": [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        "s": [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110],
        "t": [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        "u": [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        "0": [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        "1": [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        "2": [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        "3": [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        "4": [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        "5": [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        "6": [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        "7": [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        "8": [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        "9": [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        ".": [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        "|": [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        " ": [0, 0, 0, 0, 0, 0, 0],
    ]
}

/// The outline of a label map (`width` x `height` labels, row-major): true where a pixel's label
/// differs from one of its four neighbours' and the pixel is not background (label 0), so the
/// outline lies just inside each predicted region.
public func labelOutline(_ labels: [Int], width: Int, height: Int) -> [Bool] {
    precondition(labels.count == width * height, "labelOutline: \(labels.count) labels for \(width) x \(height)")
    var outline = [Bool](repeating: false, count: labels.count)
    for y in 0..<height {
        for x in 0..<width {
            let k = labels[y * width + x]
            guard k != 0 else { continue }
            let neighbours = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
            outline[y * width + x] = neighbours.contains { nx, ny in
                nx >= 0 && nx < width && ny >= 0 && ny < height && labels[ny * width + nx] != k
            }
        }
    }
    return outline
}
