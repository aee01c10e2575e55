import XCTest
import Foundation
import SegTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `segtrain train` alone and under `mpirun -np 1, 2, 3`: the summed gradient of one global batch
/// (5 images: shares 3+2 and 2+2+1, so uneven) and the weights after k optimizer steps must match
/// the single process. Tolerances: gradients 1e-5 relative per tensor (issue #4's bound; the only
/// difference between rank counts is the float32 summation order: measured 2e-7 to 2.2e-6 under the
/// Cooperlake and Sandybridge kernels); weights after SGD steps 1e-5 of the largest weight; weights
/// after Adam steps `assertAdamWeightsAgree` (DataTrainingTests.swift), which says why Adam needs
/// another measure.
final class DataParallelTests: TemporaryFolderTestCase {
    override class var folderTag: String { "dp" }

    /// Runs `segtrain train` on `ranks` ranks (0: without mpirun) with a tiny model.
    private func train(ranks: Int, _ extra: [String], model: [String] = ["--image-size", "16", "--base-channels", "4"],
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let arguments = ["train"] + model + ["--depth", "2", "--threads", "1",
                         "--batch-size", "5", "--val-samples", "4", "--seed", "3"] + extra
        let result = try segtrain(arguments, ranks: ranks, timeout: 120, file: file, line: line)
        XCTAssertEqual(result.status, 0, "ranks \(ranks): \(result.stderr)", file: file, line: line)
    }

    func testFirstStepGradientIsTheSameOnOneTwoAndThreeRanks() throws {
        try checkFirstStepGradients(model: ["--image-size", "16", "--base-channels", "4"])
    }

    /// The same with a model whose layers run every convolution kernel `auto` picks: GEMM (3 -> 32,
    /// the head), Winograd F(2x2) (32 -> 32 at 32 x 32, the 16 x 16 level) and F(4x4) (96 -> 32 at
    /// 32 x 32), in all three passes.
    func testFirstStepGradientIsTheSameOnOneTwoAndThreeRanksWithEveryConvKernel() throws {
        try checkFirstStepGradients(model: ["--image-size", "32", "--base-channels", "32"])
    }

    /// --norm group (issue #18): GroupNorm's statistics are per sample, so unlike BatchNorm's (each
    /// rank's share) they do not depend on how the batch is split, and the first gradient matches the
    /// single process like the model without a norm. 48 channels: 24 groups of 2 channels at the
    /// first level, 32 of 3 at the second (96); 8 convs x (weight + GN weight + GN bias) + the head's 2.
    func testFirstStepGradientIsTheSameOnOneTwoAndThreeRanksWithGroupNorm() throws {
        try checkFirstStepGradients(model: ["--image-size", "16", "--base-channels", "48", "--norm", "group"], tensors: 26)
    }

    /// 4 and 5 ranks, where Open MPI's non-blocking allreduce picks its algorithm by size (the
    /// bucket sums go from one buffer into another, so it is not held to the binomial tree): with
    /// 213,505 parameters in buckets of 0.1 MiB (26,214 floats, over its 64 KiB bound) it runs
    /// reduce-scatter + allgather, 5 ranks with the step for a rank count that is not a power of two.
    /// The first gradient matches the single process (1e-5 per tensor, as above), --check-sync finds
    /// the ranks' weights bitwise alike after every step, and the weights after 4 SGD steps differ
    /// by at most 1e-5 of the largest weight (measured 2e-7). Not per tensor here: the biases start
    /// at 0 and stay ~3e-4, and their gradients (sums over every pixel) cancel, so the summation
    /// order alone moves them by 2e-4 of their own size (the same with Open MPI's in-place sums).
    func testFourAndFiveRanksMatchTheSingleProcess() throws {
        let model = ["--image-size", "32", "--base-channels", "32"]
        let common = ["--epochs", "2", "--train-samples", "10", "--optimizer", "sgd", "--bucket-mb", "0.1", "--check-sync", "1"]
        try train(ranks: 0, common + ["--dump-gradients", "\(folder)/grad0.safetensors", "--out", "\(folder)/r0"], model: model)
        let gradient = try loadSafetensors("\(folder)/grad0.safetensors")
        let weights = try loadSafetensors("\(folder)/r0/model.safetensors")
        for ranks in [4, 5] {
            try train(ranks: ranks, common + ["--dump-gradients", "\(folder)/grad\(ranks).safetensors", "--out", "\(folder)/r\(ranks)"],
                      model: model)
            let g = worstScaledDifference(try loadSafetensors("\(folder)/grad\(ranks).safetensors"), gradient)
            XCTAssertLessThanOrEqual(g, 1e-5, "\(ranks) ranks: the first gradient differs by \(g)")
            let w = worstDifferenceOfLargest(try loadSafetensors("\(folder)/r\(ranks)/model.safetensors"), weights)
            print("weights after 4 SGD steps on \(ranks) ranks: \(w) of the largest weight")
            XCTAssertLessThanOrEqual(w, 1e-5, "\(ranks) ranks: the weights after 4 steps differ by \(w) of the largest")
            XCTAssertGreaterThan(w, 0, "\(ranks) ranks sum in another order: bitwise equality would be suspicious")
        }
    }

    private func checkFirstStepGradients(model: [String], tensors: Int = 18,
                                         file: StaticString = #filePath, line: UInt = #line) throws {
        for ranks in [0, 1, 2, 3] {
            try train(ranks: ranks, ["--epochs", "1", "--train-samples", "5",
                                     "--dump-gradients", "\(folder)/grad\(ranks).safetensors", "--out", "\(folder)/g\(ranks)"],
                      model: model, file: file, line: line)
        }
        let single = try loadSafetensors("\(folder)/grad0.safetensors")
        XCTAssertEqual(single.count, tensors, "every parameter tensor of the depth-2 UNet", file: file, line: line)
        XCTAssertTrue(single.values.contains { $0.contains { $0 != 0 } }, file: file, line: line)
        XCTAssertEqual(try loadSafetensors("\(folder)/grad1.safetensors"), single, "mpirun -np 1 equals the singleton bitwise",
                       file: file, line: line)
        for ranks in [2, 3] {
            let worst = worstScaledDifference(try loadSafetensors("\(folder)/grad\(ranks).safetensors"), single)
            print("first-step gradient, \(model.joined(separator: " ")), \(ranks) ranks: worst scaled difference \(worst)")
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(ranks) ranks: gradient differs by \(worst)", file: file, line: line)
        }
    }

    /// A checkpoint resumes onto another number of ranks: 2 ranks for epoch 1, 1 for epoch 2, 3 for
    /// epoch 3 ends within float rounding of one uninterrupted single-process run (the same batches;
    /// only the summation order differs), with each epoch once in metrics.csv.
    func testResumeOntoOtherRankCounts() throws {
        let common = ["--train-samples", "10", "--val-samples", "4", "--batch-size", "4"]
        try train(ranks: 0, common + ["--epochs", "3", "--out", "\(folder)/straight"])
        for (ranks, epochs) in [(2, 1), (0, 2), (3, 3)] {
            try train(ranks: ranks, common + ["--epochs", "\(epochs)", "--out", "\(folder)/moved", "--resume", "auto"])
        }
        // 3 epochs of 3 Adam steps (10 samples, batch 4).
        assertAdamWeightsAgree(try loadSafetensors("\(folder)/moved/model.safetensors"),
                               try loadSafetensors("\(folder)/straight/model.safetensors"), steps: 9, lr: 1e-3,
                               "weights after 2 -> 1 -> 3 ranks")
        let epochs = try String(contentsOfFile: "\(folder)/moved/metrics.csv", encoding: .utf8)
            .split(separator: "\n").dropFirst().map { $0.prefix { $0 != "," } }
        XCTAssertEqual(epochs, ["1", "2", "3"])
    }

    /// --batch-per-rank: the global batch is that times the ranks (the same first gradient as
    /// --batch-size 4 on 2 ranks); --verbose: every rank reports its epoch.
    func testBatchPerRankAndVerbose() throws {
        let r = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                              "--batch-per-rank", "2", "--train-samples", "8", "--val-samples", "2", "--epochs", "1", "--verbose",
                              "--seed", "3", "--dump-gradients", "\(folder)/per-rank.safetensors", "--out", "\(folder)/pr"],
                             ranks: 2, timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("global batch 4 on 2 rank(s)"), r.stdout)
        for rank in 0..<2 { XCTAssertTrue(r.stdout.contains("rank \(rank)/2 ("), r.stdout) }
        try train(ranks: 2, ["--batch-size", "4", "--train-samples", "8", "--val-samples", "2", "--epochs", "1",
                             "--dump-gradients", "\(folder)/global.safetensors", "--out", "\(folder)/gl"])
        XCTAssertEqual(try loadSafetensors("\(folder)/per-rank.safetensors"), try loadSafetensors("\(folder)/global.safetensors"))
    }

    /// The gradient summed in many small buckets during backward (and in one sum after it, with
    /// --bucket-mb 0) equals the single process's.
    func testBucketedGradientSumEqualsTheSingleProcess() throws {
        try train(ranks: 0, ["--epochs", "1", "--train-samples", "5", "--dump-gradients", "\(folder)/single.safetensors",
                             "--out", "\(folder)/s"])
        let single = try loadSafetensors("\(folder)/single.safetensors")
        for (ranks, bucket) in [(2, "0.001"), (3, "0.0002"), (2, "0")] {
            let dump = "\(folder)/b\(ranks)-\(bucket).safetensors"
            try train(ranks: ranks, ["--epochs", "1", "--train-samples", "5", "--bucket-mb", bucket, "--dump-gradients", dump,
                                     "--out", "\(folder)/b\(ranks)-\(bucket)"])
            let worst = worstScaledDifference(try loadSafetensors(dump), single)
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(ranks) ranks, --bucket-mb \(bucket): gradient differs by \(worst)")
        }
    }

    func testWeightsAfterSixStepsAgreeAcrossRankCounts() throws {
        for ranks in [0, 3] {
            try train(ranks: ranks, ["--epochs", "2", "--train-samples", "15", "--optimizer", "adam", "--out", "\(folder)/w\(ranks)"])
        }
        let w3 = try loadSafetensors("\(folder)/w3/model.safetensors"), w0 = try loadSafetensors("\(folder)/w0/model.safetensors")
        assertAdamWeightsAgree(w3, w0, steps: 6, lr: 1e-3, "weights after 6 Adam steps on 3 ranks")
        let worst = worstDifferenceOfLargest(w3, w0)
        XCTAssertGreaterThan(worst, 0, "3 ranks sum in another order: bitwise equality would be suspicious")
    }

    /// Stopping after epoch 1 and resuming gives bitwise the weights of an uninterrupted run, on one
    /// process and on 2 ranks (the epoch's data order depends on (seed, epoch) only).
    func testResumeContinuesBitwiseIdentically() throws {
        let common = ["--train-samples", "15", "--optimizer", "adam"]
        for ranks in [0, 2] {
            try train(ranks: ranks, common + ["--epochs", "2", "--out", "\(folder)/straight\(ranks)"])
            try train(ranks: ranks, common + ["--epochs", "1", "--out", "\(folder)/stopped\(ranks)"])
            try train(ranks: ranks, common + ["--epochs", "2", "--out", "\(folder)/stopped\(ranks)", "--resume", "auto"])
            let straight = try loadSafetensors("\(folder)/straight\(ranks)/model.safetensors")
            XCTAssertEqual(try loadSafetensors("\(folder)/stopped\(ranks)/model.safetensors"), straight, "ranks \(ranks)")
            XCTAssertEqual(try loadSafetensors("\(folder)/stopped\(ranks)/checkpoints/last/model.safetensors"), straight)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: "\(folder)/stopped\(ranks)/checkpoints")
            XCTAssertEqual(Set(leftovers), ["last", "best"], "no temporary checkpoint folders left")
            let metrics = try String(contentsOfFile: "\(folder)/stopped\(ranks)/metrics.csv", encoding: .utf8)
            XCTAssertEqual(metrics.split(separator: "\n").map { $0.prefix(2) }, ["ep", "1,", "2,"], "one row per epoch")
        }
    }

    /// Pre-emption: a signal mid-run makes every rank stop after the same step, rank 0 writes a
    /// mid-epoch checkpoint and the job exits 0; resuming to the same epoch count gives bitwise the
    /// weights of a run never stopped, wherever the signal landed. Single process: SIGTERM;
    /// mpirun (which forwards SIGUSR1 to its ranks, as Slurm's --signal=USR1 would): SIGUSR1.
    func testSignalCheckpointsMidEpochAndResumeFinishesTheRun() throws {
        let common = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                      "--batch-size", "4", "--train-samples", "200", "--val-samples", "4", "--epochs", "6", "--seed", "5"]
        for ranks in [0, 2] {
            let (executable, prefix) = try command(ranks: ranks)
            let straight = "\(folder)/straight\(ranks)", stopped = "\(folder)/stopped\(ranks)"
            let full = try segtrain(common + ["--out", straight], ranks: ranks)
            XCTAssertEqual(full.status, 0, full.stderr)
            let metrics = "\(stopped)/metrics.csv"
            let (interrupted, signalled) = try Segtrain.runAndSignal(
                executable, prefix + common + ["--out", stopped], environment: Self.mpiEnvironment,
                signal: ranks == 0 ? SIGTERM : SIGUSR1,
                when: { ((try? String(contentsOfFile: metrics, encoding: .utf8))?.split(separator: "\n").count ?? 0) >= 2 })
            XCTAssertTrue(signalled, "the run ended before the signal; nothing was tested")
            XCTAssertEqual(interrupted.status, 0, "ranks \(ranks): \(interrupted.stderr)")
            XCTAssertTrue(interrupted.stdout.contains("stopped by SIG"), interrupted.stdout)
            XCTAssertFalse(interrupted.stdout.contains("epoch 6/6"), "stopped before the end")
            let resumed = try segtrain(common + ["--out", stopped, "--resume", "auto"], ranks: ranks)
            XCTAssertEqual(resumed.status, 0, resumed.stderr)
            XCTAssertTrue(resumed.stdout.contains("epoch 6/6"), resumed.stdout)
            XCTAssertEqual(try loadSafetensors("\(stopped)/model.safetensors"), try loadSafetensors("\(straight)/model.safetensors"),
                           "ranks \(ranks): resumed weights differ from the uninterrupted run")
        }
    }

    /// Processes whose parent is `pid` (from /proc).
    private func children(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == pid
        }
    }

    /// A rank killed mid-run ends the whole job with a non-zero code within seconds, never a hang,
    /// and the last checkpoint stays whole: resuming from it trains to the end.
    func testKilledRankEndsTheJobAndTheCheckpointSurvives() throws {
        let common = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                      "--batch-size", "4", "--train-samples", "200", "--val-samples", "4", "--seed", "5"]
        let out = "\(folder)/killed", metrics = "\(out)/metrics.csv"
        var killed = false
        let start = Date()
        let result = try segtrain(common + ["--epochs", "500", "--out", out], ranks: 2, timeout: 120) { process in
            while process.isRunning {
                let rows = (try? String(contentsOfFile: metrics, encoding: .utf8))?.split(separator: "\n").count ?? 0
                if rows >= 2, let rank = self.children(of: process.processIdentifier).last {
                    kill(rank, SIGKILL)
                    killed = true
                    return
                }
                usleep(20_000)
            }
        }
        XCTAssertTrue(killed, "no rank was killed: \(result.stdout)")
        XCTAssertFalse(result.timedOut, "the job hung after a rank died")
        XCTAssertNotEqual(result.status, 0, "a dead rank must fail the job")
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        XCTAssertFalse(result.stdout.contains("epoch 500/500"))
        let resumed = try segtrain(common + ["--epochs", "3", "--out", out, "--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from"), resumed.stdout)
    }

    /// A rank that stops answering (here: it sleeps for an hour before the gradient sum of step 2)
    /// ends the job through the other rank's stall watchdog: one line naming what it waited for, in
    /// which step, and every rank's last step time; exit 124; not a hang.
    func testStalledRankEndsTheJobWithOneLine() throws {
        let out = "\(folder)/stalled"
        let result = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2",
                                   "--threads", "1", "--batch-size", "4", "--train-samples", "16", "--val-samples", "4",
                                   "--epochs", "2", "--out", out, "--stall-timeout", "2",
                                   "--debug-stall-rank", "1", "--debug-stall-step", "2"], ranks: 2, timeout: 60)
        XCTAssertFalse(result.timedOut, "the job hung behind the stalled rank")
        XCTAssertEqual(result.status, 124, result.stderr)
        XCTAssertLessThan(result.seconds, 30)
        let line = result.stderr.split(separator: "\n").first { $0.hasPrefix("segtrain: error: rank 0: stalled") }
        let message = try XCTUnwrap(line, result.stderr)
        for part in ["for the gradient sum", "in optimizer step 2 (epoch 1)", "on ranks 0...1", "--stall-timeout"] {
            XCTAssertTrue(message.contains(part), "\(part) missing: \(message)")
        }
        // Both ranks' step-1 times are in the line.
        XCTAssertNotNil(message.range(of: #"step 1 took [0-9.e-]+ s, [0-9.e-]+ s on ranks"#, options: .regularExpression), String(message))
    }

    /// Resume carries the schedule's state: with warm-up and ReduceLROnPlateau decisions on both
    /// sides of the stop, the resumed run still equals the uninterrupted one bitwise; and early
    /// stopping ends the run when the validation loss stops improving.
    func testScheduleStateSurvivesResumeAndEarlyStopping() throws {
        let common = ["--train-samples", "20", "--epochs", "8", "--optimizer", "sgd", "--lr", "0.5", "--schedule", "plateau",
                      "--plateau-patience", "1", "--plateau-factor", "0.5", "--warmup-epochs", "1.5"]
        try train(ranks: 0, common + ["--out", "\(folder)/p1"])
        try train(ranks: 0, common.map { $0 == "8" ? "4" : $0 } + ["--out", "\(folder)/p2"])
        try train(ranks: 0, common + ["--out", "\(folder)/p2", "--resume", "auto"])
        let rates = { (path: String) in
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").dropFirst().map { $0.split(separator: ",")[8] }
        }
        XCTAssertEqual(try rates("\(folder)/p2/metrics.csv"), try rates("\(folder)/p1/metrics.csv"))
        XCTAssertGreaterThan(Set(try rates("\(folder)/p1/metrics.csv")).count, 2, "warm-up and at least one reduction")
        XCTAssertEqual(try loadSafetensors("\(folder)/p2/model.safetensors"), try loadSafetensors("\(folder)/p1/model.safetensors"))

        let early = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                                  "--batch-size", "5", "--val-samples", "4", "--seed", "3", "--train-samples", "10",
                                  "--epochs", "200", "--lr", "0.5", "--optimizer", "sgd", "--patience", "2",
                                  "--out", "\(folder)/early"])
        XCTAssertEqual(early.status, 0, early.stderr)
        XCTAssertTrue(early.stdout.contains("early stop: no better validation loss for 2 epochs"), early.stdout)
        XCTAssertFalse(early.stdout.contains("epoch 200/200"))
    }

    /// --check-sync: healthy ranks pass the check at every step; one rank's weights nudged on
    /// purpose (a hidden test flag) are caught at that step on every rank, with one message.
    func testCheckSyncPassesAndCatchesADesynchronisedRank() throws {
        let base = ["--train-samples", "20", "--epochs", "2", "--check-sync", "1"]
        try train(ranks: 3, base + ["--out", "\(folder)/sync"])
        let broken = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2",
                                   "--threads", "1", "--batch-size", "5", "--val-samples", "4"]
                                  + base + ["--out", "\(folder)/desync", "--debug-desync-rank", "1"], ranks: 3, timeout: 60)
        XCTAssertFalse(broken.timedOut)
        XCTAssertNotEqual(broken.status, 0)
        XCTAssertTrue(broken.stderr.contains("--check-sync: the weights differ between ranks after optimizer step 2"),
                      broken.stderr)
        XCTAssertEqual(broken.stderr.components(separatedBy: "weights differ").count - 1, 1, "said once, by rank 0")
    }

    /// A NaN in the gradient (injected by a hidden test flag at step 7, epoch 2) stops every rank with
    /// one message and leaves the epoch-1 checkpoint intact; --skip-nonfinite skips that step and
    /// finishes. --init-weights starts from given weights.
    /// On 2 ranks each rank keeps only its share of Adam's state current; a --checkpoint-every
    /// checkpoint mid-epoch must still hold all of it. A run stopped by a NaN at step 4 leaves the
    /// step-2 checkpoint, within epoch 1; resumed on 2 ranks it ends bitwise where an uninterrupted
    /// run ends (every rank must take the checkpoint, although no epoch was complete).
    func testPeriodicCheckpointOnTwoRanksHoldsTheWholeOptimizerState() throws {
        let base = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                    "--batch-size", "4", "--train-samples", "20", "--val-samples", "4", "--epochs", "2", "--optimizer", "adam"]
        let straight = try segtrain(base + ["--out", "\(folder)/straight"], ranks: 2, timeout: 60)
        XCTAssertEqual(straight.status, 0, straight.stderr)
        let stopped = try segtrain(base + ["--out", "\(folder)/mid", "--checkpoint-every", "2", "--debug-nan-step", "4"],
                                   ranks: 2, timeout: 60)
        XCTAssertNotEqual(stopped.status, 0, "the NaN at step 4 stops the run")
        let state = try String(contentsOfFile: "\(folder)/mid/checkpoints/last/state.json", encoding: .utf8)
        let fields = try JSONSerialization.jsonObject(with: Data(state.utf8)) as? [String: Any]
        XCTAssertEqual(fields?["step"] as? Int, 2, "the mid-epoch checkpoint: \(state)")
        XCTAssertEqual(fields?["epoch"] as? Int, 0, "within epoch 1")
        let resumed = try segtrain(base + ["--out", "\(folder)/mid", "--resume", "auto"], ranks: 2, timeout: 60)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try loadSafetensors("\(folder)/mid/model.safetensors"), try loadSafetensors("\(folder)/straight/model.safetensors"))
    }

    func testNonFiniteGradientStopsOrIsSkippedAndInitWeights() throws {
        let base = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                    "--batch-size", "4", "--train-samples", "20", "--val-samples", "4", "--epochs", "3"]
        let stopped = try segtrain(base + ["--out", "\(folder)/nan", "--debug-nan-step", "7"], ranks: 2, timeout: 60)
        XCTAssertNotEqual(stopped.status, 0)
        XCTAssertEqual(stopped.stderr.components(separatedBy: "step 7: the loss").count - 1, 1, stopped.stderr)
        let state = try String(contentsOfFile: "\(folder)/nan/checkpoints/last/state.json", encoding: .utf8)
        XCTAssertTrue(state.contains("\"epoch\" : 1,"), state)
        let resumed = try segtrain(base + ["--out", "\(folder)/nan", "--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, "the checkpoint before the NaN loads: \(resumed.stderr)")

        let skipped = try segtrain(base + ["--out", "\(folder)/skip", "--debug-nan-step", "7", "--skip-nonfinite"])
        XCTAssertEqual(skipped.status, 0, skipped.stderr)
        XCTAssertTrue(skipped.stdout.contains("skipped 1 step(s)"), skipped.stdout)
        XCTAssertTrue(skipped.stdout.contains("epoch 3/3"))

        // Starting from trained weights with a negligible learning rate ends (almost) where it began.
        let again = try segtrain(base.map { $0 == "3" ? "1" : $0 }
                                 + ["--out", "\(folder)/init", "--init-weights", "\(folder)/skip/model.safetensors",
                                    "--lr", "1e-12", "--optimizer", "sgd"])
        XCTAssertEqual(again.status, 0, again.stderr)
        let before = try loadSafetensors("\(folder)/skip/model.safetensors"), after = try loadSafetensors("\(folder)/init/model.safetensors")
        XCTAssertLessThan(worstScaledDifference(after, before), 1e-6)
        let wrong = try segtrain(base + ["--out", "\(folder)/wrong", "--init-weights",
                                         "\(folder)/skip/checkpoints/last/optimizer.safetensors"])
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssertTrue(wrong.stderr.contains("--init-weights") && wrong.stderr.contains("unexpected tensor"), wrong.stderr)
    }

    /// --checkpoint-every writes mid-epoch checkpoints that resume exactly; --keep keeps the last K
    /// epochs' checkpoints; without a terminal, --log-every prints plain progress lines.
    func testPeriodicCheckpointsKeepAndProgressLines() throws {
        let base = ["--train-samples", "20", "--epochs", "4"]
        try train(ranks: 0, base + ["--out", "\(folder)/full"])
        // Every 3 steps with 4 steps per epoch: the last one is mid-epoch 3 (step 9 = batch 1 of epoch 3).
        let run = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                                "--batch-size", "5", "--val-samples", "4", "--seed", "3", "--train-samples", "20",
                                "--epochs", "2", "--checkpoint-every", "3", "--keep", "1", "--log-every", "0.000001",
                                "--out", "\(folder)/part"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("epoch 1/2 step 4/4  loss"), "plain progress lines: \(run.stdout)")
        let kept = try FileManager.default.contentsOfDirectory(atPath: "\(folder)/part/checkpoints").sorted()
        XCTAssertEqual(kept, ["best", "epoch-002", "last"], "--keep 1 keeps only the newest epoch")
        XCTAssertEqual(try loadSafetensors("\(folder)/part/checkpoints/epoch-002/model.safetensors"),
                       try loadSafetensors("\(folder)/part/model.safetensors"))
        try train(ranks: 0, base + ["--out", "\(folder)/part", "--resume", "auto"])
        XCTAssertEqual(try loadSafetensors("\(folder)/part/model.safetensors"), try loadSafetensors("\(folder)/full/model.safetensors"))
        // A mid-epoch checkpoint from --checkpoint-every resumes exactly too.
        let midRun = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                                   "--batch-size", "5", "--val-samples", "4", "--seed", "3", "--train-samples", "20",
                                   "--epochs", "4", "--checkpoint-every", "3", "--out", "\(folder)/mid"])
        XCTAssertEqual(midRun.status, 0, midRun.stderr)
        let midState = try String(contentsOfFile: "\(folder)/mid/checkpoints/last/state.json", encoding: .utf8)
        XCTAssertTrue(midState.contains("\"epoch\" : 4"), "the epoch-end checkpoint is the last one: \(midState)")
    }

    /// --accumulate 2 with global batch 4 takes the same steps as batch 8 (the same samples in the
    /// same order): the weights agree as `assertAdamWeightsAgree` asks (summation order only), on one
    /// process and on 2 ranks.
    func testAccumulationEqualsTheLargerBatch() throws {
        func trainAdam(_ ranks: Int, _ extra: [String], _ out: String) throws {
            let arguments = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                             "--train-samples", "32", "--val-samples", "4", "--epochs", "2", "--optimizer", "adam",
                             "--out", out] + extra
            let result = try segtrain(arguments, ranks: ranks)
            XCTAssertEqual(result.status, 0, result.stderr)
        }
        try trainAdam(0, ["--batch-size", "8"], "\(folder)/b8")
        try trainAdam(0, ["--batch-size", "4", "--accumulate", "2"], "\(folder)/b4a2")
        try trainAdam(2, ["--batch-size", "4", "--accumulate", "2"], "\(folder)/b4a2r2")
        let reference = try loadSafetensors("\(folder)/b8/model.safetensors")
        for name in ["b4a2", "b4a2r2"] {
            // 2 epochs of 4 Adam steps (32 samples, batch 8).
            assertAdamWeightsAgree(try loadSafetensors("\(folder)/\(name)/model.safetensors"), reference, steps: 8, lr: 1e-3,
                                   "accumulation \(name)")
        }
    }

    /// A damaged checkpoint is refused with one line naming the file; nothing trains.
    func testDamagedCheckpointsAreRefused() throws {
        try train(ranks: 0, ["--epochs", "1", "--train-samples", "5", "--out", "\(folder)/c"])
        let last = "\(folder)/c/checkpoints/last"
        let model = try Data(contentsOf: URL(fileURLWithPath: "\(last)/model.safetensors"))
        let damages: [(String, () throws -> Void, String)] = [
            ("truncated weights", { try model.prefix(model.count - 100).write(to: URL(fileURLWithPath: "\(last)/model.safetensors")) },
             "model.safetensors: "),
            ("tampered shape", {
                var bytes = [UInt8](model)
                let needle = Array("\"shape\":[4,3,3,3]".utf8)
                let offset = (0...(bytes.count - needle.count)).first { Array(bytes[$0..<($0 + needle.count)]) == needle }!
                for (i, c) in "\"shape\":[3,4,3,3]".utf8.enumerated() { bytes[offset + i] = c }
                try Data(bytes).write(to: URL(fileURLWithPath: "\(last)/model.safetensors"))
             }, "has shape [3, 4, 3, 3], expected [4, 3, 3, 3]"),
            // A hand-edited state with a negative epoch stopped with a trap before.
            ("negative epoch", {
                let path = "\(last)/state.json"
                var state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
                state["epoch"] = -3
                try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
             }, "epoch -3"),
            ("missing state", { try FileManager.default.removeItem(atPath: "\(last)/state.json") }, "state.json: no such file"),
        ]
        for (what, damage, expected) in damages {
            try damage()
            let result = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2",
                                       "--threads", "1", "--batch-size", "5", "--val-samples", "4", "--seed", "3",
                                       "--epochs", "2", "--train-samples", "5", "--out", "\(folder)/c", "--resume", "auto"])
            XCTAssertNotEqual(result.status, 0, what)
            XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, "\(what): \(result.stderr)")
            XCTAssertTrue(result.stderr.contains(expected) && result.stderr.contains("--resume"), "\(what): \(result.stderr)")
            XCTAssertFalse(result.stdout.contains("epoch 2/2"), "\(what): trained anyway")
            try model.write(to: URL(fileURLWithPath: "\(last)/model.safetensors"))  // undo for the next case
        }
    }

    /// Ranks started with different configurations stop together with a clear message, no hang.
    func testConfigurationMismatchStopsEveryRank() throws {
        let common = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                      "--epochs", "1", "--train-samples", "4", "--batch-size", "2", "--out", "\(folder)/m"]
        let result = try run(try mpirun(), ["--oversubscribe", "-np", "1", DataParallelTests.binary] + common
                             + [":", "-np", "1", DataParallelTests.binary] + common + ["--lr", "0.002"], timeout: 60)
        XCTAssertFalse(result.timedOut, "a configuration mismatch must not hang")
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("ranks disagree on the command line"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(folder)/m/metrics.csv"), "no training happened")
    }
}
