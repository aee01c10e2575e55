import XCTest
import SegEngine

final class ScheduleTests: XCTestCase {
    private func schedule(_ kind: ScheduleKind, _ edit: (inout ScheduleConfig) -> Void = { _ in }) -> LearningRateSchedule {
        var c = ScheduleConfig(kind: kind, baseRate: 0.1, epochs: 10)
        edit(&c)
        return LearningRateSchedule(c)
    }

    func testClosedFormSchedules() {
        XCTAssertEqual(schedule(.constant).rate(progress: 7.3), 0.1)
        let step = schedule(.step) { $0.stepEpochs = 3; $0.gamma = 0.5 }
        XCTAssertEqual(step.rate(progress: 2.99), 0.1)
        XCTAssertEqual(step.rate(progress: 3), 0.05)
        XCTAssertEqual(step.rate(progress: 6.5), 0.025)
        let cosine = schedule(.cosine) { $0.minimumRate = 0.01 }
        XCTAssertEqual(cosine.rate(progress: 0), 0.1, accuracy: 1e-12)
        XCTAssertEqual(cosine.rate(progress: 5), 0.055, accuracy: 1e-12)  // halfway: the mean
        XCTAssertEqual(cosine.rate(progress: 10), 0.01, accuracy: 1e-12)
        let poly = schedule(.poly) { $0.power = 2 }
        XCTAssertEqual(poly.rate(progress: 5), 0.1 * 0.25, accuracy: 1e-12)
        // Warm-up: linear from 0 over 2 epochs, then the schedule.
        let warm = schedule(.constant) { $0.warmupEpochs = 2 }
        XCTAssertEqual(warm.rate(progress: 0), 0)
        XCTAssertEqual(warm.rate(progress: 0.5), 0.025, accuracy: 1e-12)
        XCTAssertEqual(warm.rate(progress: 2), 0.1)
    }

    /// Keras ReduceLROnPlateau(factor 0.2, patience 2, cooldown 2, min_lr 0.001), the seeds'
    /// setting, on a hand-made loss sequence; expected rates worked out from Keras' algorithm.
    func testPlateauFollowsKeras() {
        var s = schedule(.plateau) { $0.plateauFactor = 0.2; $0.plateauPatience = 2; $0.plateauCooldown = 2; $0.minimumRate = 0.001 }
        let losses = [1.0, 0.9, 0.95, 0.95, 0.97, 0.96, 0.99, 0.98, 0.8, 0.85, 0.86, 0.9, 0.9, 0.9, 0.9, 0.9]
        var rates: [Double] = []
        for loss in losses { s.endEpoch(validationLoss: loss); rates.append(s.plateau.rate) }
        // Keras: the cooldown counts down first, then "not in cooldown" is asked again. Epochs 3, 4
        // bad -> reduce at 4 (0.02), cooldown 2; epoch 5 in cooldown (2 -> 1); epoch 6 counts down to
        // 0 and, no longer in cooldown, is bad (wait 1); epoch 7 bad (wait 2) -> 0.004, cooldown 2;
        // 8 in cooldown; 9 improves; 10, 11 bad -> 0.0008, floored at 0.001; then the floor.
        let expected = [0.1, 0.1, 0.1, 0.02, 0.02, 0.02, 0.004, 0.004, 0.004, 0.004, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001]
        for (i, (r, e)) in zip(rates, expected).enumerated() { XCTAssertEqual(r, e, accuracy: 1e-12, "epoch \(i + 1)") }
        XCTAssertFalse(s.endEpoch(validationLoss: 0.95), "at the floor nothing changes")
    }

    func testValidationNamesTheFlag() {
        var c = ScheduleConfig(kind: .step, baseRate: 0.1, epochs: 5)
        c.gamma = 0
        XCTAssertTrue(c.validate()!.hasPrefix("--gamma"))
        c.gamma = 0.5; c.minimumRate = 1
        XCTAssertTrue(c.validate()!.hasPrefix("--min-lr"))
        c.minimumRate = 0; c.warmupEpochs = -1
        XCTAssertTrue(c.validate()!.hasPrefix("--warmup-epochs"))
    }
}
