// `segtrain bench --inference`: the forward path of predict, evaluate and serve (Predictor.predict:
// normalise, forward in eval mode, sigmoid/softmax, probabilities at the image's size) on batches
// of random images at the training size, warm-up passes, then timed passes: images/s, forward
// GFLOP/s, peak RSS, heap allocations (with scripts/alloc-counter's shim) and where the time went.

import SegData
import SegEngine
import SegModel

/// What `InferenceBenchmark.run` measured.
public struct InferenceBenchmarkResult {
    public var batch = 0, passes = 0, parameters = 0
    public var seconds = 0.0, flopsPerImage = 0.0, peakResidentMiB = 0.0
    /// Bytes the model planned for activations and scratch at this batch.
    public var plannedActivationBytes = 0
    /// Heap allocations in the timed passes (all, over 256 bytes), with the counting shim loaded.
    public var heapAllocations: (all: Int, large: Int)?
    /// Seconds per pass by kind of work inside the model; `outside` is the rest of `predict`
    /// (normalising, sigmoid/softmax, copying the probabilities out).
    public var byKind: [(kind: WorkKind, seconds: Double)] = []
    public var outsideSeconds = 0.0

    public var imagesPerSecond: Double { Double(batch * passes) / seconds }
    public var gflopsPerSecond: Double { flopsPerImage * imagesPerSecond / 1e9 }
    public var secondsPerPass: Double { seconds / Double(passes) }

    /// One JSON object; `extra` fields ("\"key\": value") first.
    public func json(_ extra: [String]) -> String {
        var fields = extra + [
            "\"mode\": \"inference\"", "\"passes\": \(passes)", "\"parameters\": \(parameters)",
            "\"images_per_second\": \(imagesPerSecond)", "\"gflops_per_second\": \(gflopsPerSecond)",
            "\"seconds_per_pass\": \(secondsPerPass)", "\"peak_rss_mib\": \(peakResidentMiB)",
            "\"planned_activation_mib\": \(Double(plannedActivationBytes) / 1_048_576)",
        ]
        if let heapAllocations {
            fields.append("\"heap_allocations_in_timed_passes\": \(heapAllocations.all)")
            fields.append("\"large_heap_allocations_in_timed_passes\": \(heapAllocations.large)")
        }
        let split = (byKind.map { "\"\($0.kind.key)\": \($0.seconds)" } + ["\"outside_model\": \(outsideSeconds)"])
            .joined(separator: ", ")
        fields.append("\"seconds_per_pass_by_kind\": {\(split)}")
        return "{" + fields.joined(separator: ", ") + "}"
    }

    /// The table's lines after the heading.
    public func table() -> [String] {
        var lines = [
            "  \(grouped(parameters)) parameters, \(fixed(flopsPerImage / 1e9, 2)) GFLOP per image per forward pass",
            "  images/s      \(fixed(imagesPerSecond, 2))",
            "  GFLOP/s       \(fixed(gflopsPerSecond, 1))",
            "  s/pass        \(fixed(secondsPerPass, 3))",
            "  peak RSS      \(fixed(peakResidentMiB, 0)) MiB (activations and scratch planned: "
                + "\(fixed(Double(plannedActivationBytes) / 1_048_576, 0)) MiB)",
        ]
        if let heapAllocations {
            lines.append("  heap allocations in timed passes: \(heapAllocations.all) (\(heapAllocations.large) over 256 bytes)")
        }
        lines.append("  time per pass by kind:")
        let rows = byKind.map { ($0.kind.label, $0.seconds) } + [("outside the model", outsideSeconds)]
        let total = rows.reduce(0) { $0 + $1.1 }
        for (label, s) in rows {
            lines.append("    " + pad(label, 24) + lpad(fixed(1000 * s, 1) + " ms", 12) + lpad(fixed(100 * s / total, 1) + " %", 9))
        }
        return lines
    }
}

public enum InferenceBenchmark {
    /// Times `predictor.predict` on `batch` random images of the training size (pixels from
    /// `seed`): `warmup` untimed passes, then `passes` timed ones.
    public static func run(_ predictor: Predictor, batch: Int, warmup: Int, passes: Int, seed: UInt64) -> InferenceBenchmarkResult {
        precondition(batch >= 1 && passes >= 1 && warmup >= 0)
        let s = predictor.description.imageSize, channels = predictor.description.inChannels
        var random = SplitMix64(seed: seed)
        let images = (0..<batch).map { _ in
            Image8(width: s, height: s, channels: channels, pixels: (0..<(s * s * channels)).map { _ in UInt8(truncatingIfNeeded: random.next()) })
        }
        for _ in 0..<warmup { _ = predictor.predict(images) }
        let model = predictor.model
        model.profile.reset()
        let allocationsBefore = heapAllocationCount(), largeBefore = heapAllocationCount(large: true)
        let start = monotonicSeconds()
        for _ in 0..<passes { _ = predictor.predict(images) }
        let seconds = monotonicSeconds() - start
        let allocationsAfter = heapAllocationCount(), largeAfter = heapAllocationCount(large: true)
        var r = InferenceBenchmarkResult()
        r.batch = batch
        r.passes = passes
        r.seconds = seconds
        r.parameters = model.parameterCount
        r.flopsPerImage = model.layers.reduce(0) { $0 + $1.forwardFLOPs }
        r.peakResidentMiB = peakResidentMiB()
        r.plannedActivationBytes = model.plannedActivationBytes
        if let allocationsBefore, let largeBefore, let now = allocationsAfter, let large = largeAfter {
            r.heapAllocations = (now - allocationsBefore, large - largeBefore)
        }
        r.byKind = WorkKind.allCases.filter { model.profile[$0] > 0 }.map { ($0, model.profile[$0] / Double(passes)) }
        r.outsideSeconds = max(0, (seconds - model.profile.total) / Double(passes))
        return r
    }
}
