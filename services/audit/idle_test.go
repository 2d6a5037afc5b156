package audit

import (
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// Many short-lived scopes (a stranger's, or tenants come and gone) do not
// pin memory: idle queues are freed, busy ones kept.
func TestIdleQueuesFreed(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	s := &Service{queues: map[auditlog.Scope]*scopeQueue{}, now: func() time.Time { return t0 }}
	idle := s.queueOf(auditlog.Scope{Kind: shared.AuditKindTenant, ID: "gone"})
	idle.idle = t0
	busy := s.queueOf(auditlog.Scope{Kind: shared.AuditKindTenant, ID: "busy"})
	busy.idle = t0
	busy.byID["x"] = &pending{} // held for commit or redelivery
	fresh := s.queueOf(auditlog.Scope{Kind: shared.AuditKindXKS, ID: "new"})

	s.freeIdle(t0.Add(idleAfter / 2))
	if s.queueCount() != 3 {
		t.Fatalf("%d queues after half the idle time, want 3", s.queueCount())
	}
	s.freeIdle(t0.Add(2 * idleAfter))
	if s.queueCount() != 2 || !idle.freed || busy.freed || fresh.freed {
		t.Fatalf("%d queues; freed idle=%v busy=%v new=%v", s.queueCount(), idle.freed, busy.freed, fresh.freed)
	}
	if q := s.queueOf(idle.scope); q == idle || q.freed {
		t.Fatal("a freed queue was handed out again")
	}
}
