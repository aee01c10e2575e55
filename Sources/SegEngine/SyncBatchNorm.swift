// SyncBatchNorm (`--sync-bn`): BatchNorm whose training statistics are those of the global batch,
// every rank's images together, as PyTorch's torch.nn.SyncBatchNorm computes them on GPUs. With
// 2-4 images per rank the per-rank statistics are noisy and an N-rank step is not the 1-rank step;
// with the sums exchanged it is, within rounding (the per-channel Double sums are added in another
// grouping).
//
// Forward, per layer: (1) each rank's per-channel sum of x and its value count -> allreduce ->
// the global mean; (2) each rank's sum of squared deviations from that mean -> allreduce -> the
// global (biased) variance. Two passes as in the single-process BatchNorm, so no E[x^2] - E[x]^2
// cancellation. Backward: each rank's sum(dy) and sum(dy * xhat) per channel -> allreduce; dx uses
// the global sums over the global count m, while dgamma and dbeta keep this rank's sums (the
// gradient allreduce adds the other ranks'). Every rank must take part in every sum: a rank with no
// image in a step cannot run the forward, so training refuses such runs (Trainer.checkBatchesFitTheModel).
//
// The sums go through `Collectives.allreduceSum(UnsafeMutableBufferPointer<Double>)` in a buffer
// made once for the model's widest BatchNorm (nothing is allocated in the step). A model's forward cannot
// throw, so a failed sum ends the job (`Collectives.abort`): one line, never a hang.

/// The exchange of BatchNorm statistics between ranks, shared by every BatchNorm layer of a model.
public final class BatchStatisticsSum {
    public let collectives: Collectives
    /// Room for one layer's sums: 2 C + 1 doubles for the widest layer.
    private let buffer: UnsafeMutableBufferPointer<Double>
    /// Sums made (2 per BatchNorm forward, 1 per backward that computes dx): for tests and reports.
    public private(set) var sums = 0

    /// For layers of up to `channels` channels (`SegmentationModel.widestBatchNorm`).
    public init(collectives: Collectives, channels: Int) {
        self.collectives = collectives
        buffer = .allocate(capacity: 2 * channels + 1)
    }

    deinit { buffer.deallocate() }

    /// The first `count` doubles of the buffer.
    func values(_ count: Int) -> UnsafeMutableBufferPointer<Double> {
        precondition(count <= buffer.count, "BatchStatisticsSum: a layer wider than the channels it was made for")
        return UnsafeMutableBufferPointer(rebasing: buffer[0..<count])
    }

    /// Sums `values` over the ranks in place; a failure ends the job.
    func allreduce(_ values: UnsafeMutableBufferPointer<Double>) {
        sums += 1
        do { try collectives.allreduceSum(values) } catch {
            collectives.abort(code: 1, message: "--sync-bn: the BatchNorm statistics' sum failed: \(error)")
        }
    }
}

/// The training forward of `batchNormForward` with the statistics of all ranks' batches. Writes
/// the same outputs; the running variance's unbiasing uses the global count.
func synchronizedBatchNormForward(_ y: Tensor, _ x: Tensor, gamma: Tensor, beta: Tensor, runningMean: Tensor,
                                  runningVar: Tensor, saveMean: Tensor, saveInvStd: Tensor, momentum: Float,
                                  epsilon: Float, sum: BatchStatisticsSum, relu: Bool = false, pool: WorkerPool) {
    let channels = x.c, plane = x.shape.plane, batch = x.n
    // [0, C): sums, then means; C: the value count; [C + 1, 2C + 1): squared deviations.
    let first = sum.values(channels + 1)
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange { first[c] = BatchNormChannel.sum(x, c) }
    }
    first[channels] = Double(batch * plane)
    sum.allreduce(first)
    let m = first[channels]
    precondition(m > 1, "synchronizedBatchNormForward: training needs more than one value per channel over the ranks, got \(m)")
    let second = UnsafeMutableBufferPointer(rebasing: sum.values(2 * channels + 1)[(channels + 1)...])
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            first[c] /= m
            second[c] = BatchNormChannel.squaredDeviations(x, c, from: first[c])
        }
    }
    sum.allreduce(second)
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            BatchNormChannel.finish(y, x, c, mean: first[c], variance: second[c] / m, count: m, gamma: gamma, beta: beta,
                                    runningMean: runningMean, runningVar: runningVar, saveMean: saveMean,
                                    saveInvStd: saveInvStd, momentum: momentum, epsilon: epsilon, relu: relu)
        }
    }
}

/// The training backward of `batchNormBackward` after a synchronized forward: dx from the sums of
/// all ranks, dgamma and dbeta from this rank's.
func synchronizedBatchNormBackward(dx: Tensor, dgamma: Tensor, dbeta: Tensor, dy: Tensor, x: Tensor, gamma: Tensor,
                                   saveMean: Tensor, saveInvStd: Tensor, sum: BatchStatisticsSum, overwrite: Bool = false,
                                   reluBeta: Tensor? = nil, pool: WorkerPool) {
    func relu(_ c: Int) -> BatchNormChannel.ReluMask? {
        reluBeta.map { BatchNormChannel.ReluMask(mean: saveMean[c], scale: gamma[c] * saveInvStd[c], shift: $0[c]) }
    }
    let channels = x.c, plane = x.shape.plane, batch = x.n
    // [0, C): sum(dy); [C, 2C): sum(dy * xhat); 2C: the value count.
    let sums = sum.values(2 * channels + 1)
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            let local = BatchNormChannel.gradientSums(dy, x, c, mean: saveMean[c], invStd: saveInvStd[c], relu: relu(c))
            dbeta[c] += Float(local.dy)
            dgamma[c] += Float(local.dyXhat)
            sums[c] = local.dy
            sums[channels + c] = local.dyXhat
        }
    }
    sums[2 * channels] = Double(batch * plane)
    sum.allreduce(sums)
    let m = sums[2 * channels]
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            BatchNormChannel.addInputGradient(dx, dy, x, c, mean: saveMean[c], invStd: saveInvStd[c], gamma: gamma[c],
                                              meanDy: Float(sums[c] / m), meanDyXhat: Float(sums[channels + c] / m),
                                              overwrite: overwrite, relu: relu(c))
        }
    }
}
