package audit

import (
	"context"
	"fmt"

	"golang.org/x/time/rate"
)

// Signing budget
//
// Every checkpoint is one ECDSA signature by the sign pool's HSM, the same
// HSM that serves customers' crypto. Checkpoints are made per active scope
// every second, and anyone who can make scopes active (one event each)
// could otherwise turn the audit service into an HSM load generator. Each
// audit process therefore signs at most SignsPerSecond checkpoints per
// second (burst the same): past it, rounds wait (and later rounds merge
// the scopes still dirty), so checkpoint cadence degrades, customer crypto
// does not.

// DefaultSignsPerSecond is the default signing budget of one audit process.
const DefaultSignsPerSecond = 20

func newSignBudget(perSecond float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(perSecond), max(1, int(perSecond)))
}

// spendSign waits for one signature's budget.
func (g *signer) spendSign(ctx context.Context) error {
	if err := g.budget.Wait(ctx); err != nil {
		return fmt.Errorf("audit: checkpoint signing budget: %w", err)
	}
	return nil
}
