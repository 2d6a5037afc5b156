package audit

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Events in many scopes at once would ask the HSM for a signature per scope
// per round; the budget bounds the signatures (at most burst + rate x
// elapsed, however fast or slow the machine) and every scope still gets
// its checkpoint in turn.
func TestCheckpointSigningBudget(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	const scopes, perSecond = 6, 2
	start := time.Now()
	svc, _ := runAudit(t, nc, js, Config{SignsPerSecond: perSecond})
	var evs []*shared.AuditEvent
	for i := range scopes {
		evs = append(evs, event(auditlog.Scope{Kind: shared.AuditKindTenant, ID: fmt.Sprintf("vpc-budget-%d", i)}, shared.AuditServiceKeyworker, i))
	}
	publishAsync(t, js, evs)
	testkit.CheckFor(t, recordWait, pollEvery, func() error {
		st := svc.Snapshot()
		limit := uint64(perSecond + math.Ceil(time.Since(start).Seconds())*perSecond)
		if st.Checkpoints > limit {
			t.Fatalf("%d checkpoints signed within %s: budget allows %d", st.Checkpoints, time.Since(start), limit)
		}
		if st.Checkpoints < scopes {
			return fmt.Errorf("%d of %d scopes checkpointed", st.Checkpoints, scopes)
		}
		return nil
	})
}
