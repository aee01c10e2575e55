// Slices of a batch for tests that compare an image's result in batches of different sizes.

import SegEngine

public extension OwnedTensor {
    /// The first `images` images of this (N, C, H, W) batch, copied into a tensor of their own.
    func firstImages(_ images: Int) -> OwnedTensor {
        precondition(images <= tensor.n, "firstImages: \(images) of a batch of \(tensor.n)")
        let shape = Shape(images, tensor.c, tensor.h, tensor.w)
        return OwnedTensor(shape, Array(tensor.toArray()[0..<shape.count]))
    }
}
