// The names `segtrain predict` gives its outputs: IMAGE_mask.png etc. for IMAGE.ext. Inputs that
// share a stem (a.png and a.jpg, b.jpeg and b.PNG) would overwrite each other's outputs: each of
// them is named with its extension instead (a_png_mask.png, a_jpg_mask.png), and a set of inputs
// that still collides (compared ignoring case, as macOS and Windows file systems do) is refused
// up front with one line naming both files.

import SegData

public struct OutputNameError: Error, CustomStringConvertible {
    public let description: String
}

public enum OutputNames {
    /// The stem each input's outputs are named from, in the order of `paths`: the file stem, or
    /// stem_ext for inputs whose stems collide; throws when two inputs would still get one name.
    public static func stems(for paths: [String]) throws -> [String] {
        let stems = paths.map { DatasetScanner.stem($0) }
        var counts: [String: Int] = [:]
        for s in stems { counts[s.lowercased(), default: 0] += 1 }
        let named = zip(paths, stems).map { path, stem -> String in
            guard counts[stem.lowercased(), default: 0] > 1 else { return stem }
            let base = path.split(separator: "/").last.map(String.init) ?? path
            let ext = base.count > stem.count ? String(base.dropFirst(stem.count + 1)) : ""
            return ext.isEmpty ? stem : stem + "_" + ext
        }
        var owner: [String: String] = [:]
        for (path, name) in zip(paths, named) {
            if let other = owner[name.lowercased()] {
                throw OutputNameError(description: "\(other) and \(path) would write the same outputs (\(name)_*.png); "
                                      + "rename one or predict them into separate --output folders")
            }
            owner[name.lowercased()] = path
        }
        return named
    }
}
