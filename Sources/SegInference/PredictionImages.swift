// The images made from a prediction's labels: the mask as written, the cut-out (RGBA, background
// transparent) and the composite on another background; shared by `segtrain predict` and the HTTP
// service (SegServe). Images are Image8, pixels interleaved; labels one channel of class indices.

import SegData

/// The images made from a prediction, shared by `segtrain predict` and `segtrain serve`.
public enum PredictionImages {
    /// The label mask as written: 0/255 for a binary model, class indices otherwise.
    public static func mask(_ labels: Image8, classes: Int) -> Image8 {
        var m = labels
        if classes == 1 { for i in m.pixels.indices { m.pixels[i] = m.pixels[i] == 0 ? 0 : 255 } }
        return m
    }

    /// RGBA: the image's colours, opaque where the label is not 0 (background), transparent elsewhere.
    public static func cutout(_ image: Image8, labels: Image8) -> Image8 {
        let rgb = image.channels >= 3 ? image : PredictionImages.rgb(image)
        var o = Image8(width: image.width, height: image.height, channels: 4)
        for i in 0..<(image.width * image.height) {
            for ch in 0..<3 { o.pixels[i * 4 + ch] = rgb.pixels[i * rgb.channels + ch] }
            o.pixels[i * 4 + 3] = labels.pixels[i] == 0 ? 0 : 255
        }
        return o
    }

    /// RGB: the image where the label is not 0, `behind` (RGB, the image's size) elsewhere.
    public static func composite(_ image: Image8, labels: Image8, behind: Image8) -> Image8 {
        let rgb = image.channels >= 3 ? image : PredictionImages.rgb(image)
        var o = Image8(width: image.width, height: image.height, channels: 3)
        for i in 0..<(image.width * image.height) {
            let front = labels.pixels[i] != 0
            for ch in 0..<3 { o.pixels[i * 3 + ch] = front ? rgb.pixels[i * rgb.channels + ch] : behind.pixels[i * 3 + ch] }
        }
        return o
    }

    /// One class's probability (plane `c`; the foreground for a binary model) as 8-bit gray.
    public static func probability(_ prediction: Prediction, plane c: Int) -> Image8 {
        var p = Image8(width: prediction.labels.width, height: prediction.labels.height, channels: 1)
        let plane = p.width * p.height
        for i in 0..<plane {
            p.pixels[i] = UInt8(max(0, min(255, (prediction.probabilities[c * plane + i] * 255).rounded())))
        }
        return p
    }

    /// RGB: the image with every labelled pixel (label > 0) averaged with its class colour (red
    /// for a binary model; `SampleGrid.colour` otherwise).
    public static func overlay(_ image: Image8, labels: Image8, classes: Int) -> Image8 {
        let rgb = image.channels >= 3 ? image : PredictionImages.rgb(image)
        var o = Image8(width: image.width, height: image.height, channels: 3)
        for i in 0..<(image.width * image.height) {
            let label = Int(labels.pixels[i])
            let tint: (UInt8, UInt8, UInt8)? = label == 0 ? nil : (classes == 1 ? (255, 40, 40) : SampleGrid.colour(label, classes: classes))
            for ch in 0..<3 {
                let v = Int(rgb.pixels[i * rgb.channels + ch])
                guard let tint else { o.pixels[i * 3 + ch] = UInt8(v); continue }
                o.pixels[i * 3 + ch] = UInt8((v + Int([tint.0, tint.1, tint.2][ch])) / 2)
            }
        }
        return o
    }

    /// An RGB image of one colour.
    public static func solid(_ colour: (UInt8, UInt8, UInt8), width: Int, height: Int) -> Image8 {
        var solid = Image8(width: width, height: height, channels: 3)
        for i in 0..<(width * height) {
            solid.pixels[3 * i] = colour.0; solid.pixels[3 * i + 1] = colour.1; solid.pixels[3 * i + 2] = colour.2
        }
        return solid
    }

    /// Gray (+ alpha) replicated to RGB; alpha dropped.
    public static func rgb(_ image: Image8) -> Image8 {
        var out = Image8(width: image.width, height: image.height, channels: 3)
        for i in 0..<(image.width * image.height) {
            for ch in 0..<3 { out.pixels[i * 3 + ch] = image.pixels[i * image.channels] }
        }
        return out
    }

    /// `#RRGGBB` as bytes, or nil.
    public static func colour(_ text: String) -> (UInt8, UInt8, UInt8)? {
        guard text.count == 7, text.hasPrefix("#"), text.dropFirst().allSatisfy(\.isHexDigit),
              let v = UInt32(text.dropFirst(), radix: 16) else { return nil }
        return (UInt8(v >> 16), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF))
    }
}

extension PredictionImages {
    /// `values` as a NumPy .npy file (format 1.0: float32 little-endian, C order, `shape`), what
    /// `predict --logits` writes (numpy.load reads it).
    public static func npy(_ values: [Float], shape: [Int]) -> [UInt8] {
        precondition(shape.reduce(1, *) == values.count, "npy: \(values.count) values for shape \(shape)")
        let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(dims)), }"
        // Magic (6) + version (2) + length (2) + header + "\n", padded with spaces to a multiple of 64.
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        let length = UInt16(header.utf8.count)
        bytes += [UInt8(length & 0xff), UInt8(length >> 8)]
        bytes += Array(header.utf8)
        values.withUnsafeBytes { bytes += $0 }  // little-endian hosts (x86_64, arm64)
        return bytes
    }
}
