// The broker's timers: wills waiting out their delay and the expiry sweep, due by the broker's own
// clock, so that tests move time by hand instead of waiting for it.
import Foundation

/// What makes the broker's timers fire.
public enum BrokerTimerDriver: Sendable {
    /// A dispatch timer armed for the next deadline by the broker's clock.
    case dispatch
    /// Nothing fires on its own: the owner calls `Broker.fireDueTimers()` after moving the
    /// clock it gave the broker (tests).
    case manual
}

extension Broker {
    /// Publishes the wills whose delay has passed and runs the expiry sweep if it is due, by
    /// the broker's clock; then arms the timer for the next deadline.
    public func fireDueTimers() {
        locked {
            guard !closed else { return }
            let now = clock()
            var due: [SessionState] = []
            for (key, state) in waitingWills {
                if state.pendingWill == nil {
                    waitingWills[key] = nil  // cancelled: resumed, ended or published
                } else if state.willDue <= now {
                    waitingWills[key] = nil
                    due.append(state)
                }
            }
            // Wills due together go in the order their delays began.
            due.sort { ($0.willDue, $0.willOrder) < ($1.willDue, $1.willOrder) }
            for state in due { willDelayEnded(state) }
            if let sweepInterval, now >= nextSweep {
                nextSweep = now + sweepInterval
                sweepExpiredLocked(now: now)
            }
            armForNextDeadline()
        }
    }

    /// Arms the timer for the earliest of the sweep and the waiting wills (a cancelled will
    /// may make it fire early, which prunes it).
    func armForNextDeadline() {
        armedDeadline = .max
        armTimer(for: waitingWills.values.reduce(nextSweep) { min($0, $1.willDue) })
    }

    /// Arms the dispatch timer for `deadline` (the broker's clock, µs) unless it is armed
    /// sooner already; under the lock. An early firing is harmless: nothing is due yet, and
    /// the timer is armed again.
    func armTimer(for deadline: Int64) {
        guard let timer, deadline < armedDeadline else { return }
        armedDeadline = deadline
        // At most a day ahead: a long deadline is reached by re-arming, and the µs count stays
        // far from overflowing `DispatchTime`.
        let delay = min(max(0, deadline - clock()), 86_400_000_000)
        timer.schedule(deadline: .now() + .microseconds(Int(delay)), leeway: .milliseconds(10))
    }
}
