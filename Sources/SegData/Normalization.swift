// Per-channel input normalisation, (x / 255 - mean) / std, as written on the command line:
// comma-separated values, one value for every channel, or `imagenet` (torchvision's constants).

import Foundation

public enum Normalization {
    public static let imagenetMean: [Float] = [0.485, 0.456, 0.406]
    public static let imagenetStd: [Float] = [0.229, 0.224, 0.225]

    /// (mean, std) for `channels` channels from --mean and --std (a missing one: 0 or 1), or nil
    /// when neither is given. Errors name the flag.
    public static func parse(mean: String?, std: String?, channels: Int) throws -> (mean: [Float], std: [Float])? {
        if mean == nil && std == nil { return nil }
        func values(_ text: String?, flag: String, imagenet: [Float], fallback: Float) throws -> [Float] {
            guard let text else { return [Float](repeating: fallback, count: channels) }
            if text == "imagenet" {
                guard channels == 3 else { throw DatasetError("\(flag) imagenet is for 3 channels (got --in-channels \(channels))") }
                return imagenet
            }
            let parsed = text.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
            guard parsed.allSatisfy({ $0 != nil && $0!.isFinite }) else { throw DatasetError("\(flag) \(text): not a list of numbers") }
            let v = parsed.map { $0! }
            if v.count == 1 { return [Float](repeating: v[0], count: channels) }
            guard v.count == channels else { throw DatasetError("\(flag) has \(v.count) values for \(channels) channels") }
            return v
        }
        let m = try values(mean, flag: "--mean", imagenet: imagenetMean, fallback: 0)
        let s = try values(std, flag: "--std", imagenet: imagenetStd, fallback: 1)
        if !s.allSatisfy({ $0 > 0 }) { throw DatasetError("--std values must be positive") }
        return (m, s)
    }
}
