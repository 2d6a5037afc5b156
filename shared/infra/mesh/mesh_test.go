package mesh

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func TestQueueFullIsDetected(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	topo := DefaultTopology()
	topo.WorkQueueDepth = 2
	if _, err := EnsureWorkStreams(ctx, js, "tiny", topo); err != nil {
		t.Fatal(err)
	}
	subj := shared.WorkSubject("tiny", shared.APIXKSEncrypt)
	for i := range 2 {
		if _, err := js.Publish(ctx, subj, []byte("x")); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	_, err := js.Publish(ctx, subj, []byte("x"))
	if err == nil || !IsQueueFull(err) {
		t.Fatalf("third publish: want queue full, got %v", err)
	}
	if IsQueueFull(errors.New("maximum messages exceeded")) {
		t.Fatal("plain error must not count as queue full")
	}
}

func TestEnsureIsIdempotent(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	topo := DefaultTopology()
	for range 2 {
		if _, err := EnsureRequestStreams(ctx, js, topo); err != nil {
			t.Fatal(err)
		}
		if _, err := EnsureAuditStreams(ctx, js, topo); err != nil {
			t.Fatal(err)
		}
		if _, err := EnsureBucket(ctx, js, "b", "test", topo); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := EnsureWorkStreams(ctx, js, "Bad.Pool", topo); !errors.Is(err, shared.ErrConfigValidation) {
		t.Fatalf("bad pool name: %v", err)
	}
}

func TestTopologyValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mut  func(*Topology)
		ok   bool
	}{
		{"default", func(*Topology) {}, true},
		{"three replicas", func(t *Topology) { t.Replicas = 3 }, true},
		{"zero replicas", func(t *Topology) { t.Replicas = 0 }, false},
		{"zero budget", func(t *Topology) { t.WorkBudget = 0 }, false},
		{"zero depth", func(t *Topology) { t.WorkQueueDepth = 0 }, false},
		{"three siblings", func(t *Topology) { t.Siblings = 3 }, true},
		{"more siblings than names", func(t *Topology) { t.Siblings = 6 }, false},
		{"negative siblings", func(t *Topology) { t.Siblings = -1 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := DefaultTopology()
			tc.mut(&topo)
			if err := topo.Validate(); (err == nil) != tc.ok {
				t.Fatalf("validate: %v", err)
			}
		})
	}
}

// Upgrade: audit event streams the previous build declared with a 2-minute
// de-duplication window (and events in them) are moved to
// AuditDuplicateWindow by the next bootstrap, keeping every event.
func TestBootstrapShrinksTheAuditDuplicateWindow(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	topo := DefaultTopology()
	topo.Siblings = 2
	for i := range topo.Siblings {
		old := AuditStreamConfig(topo, i)
		old.Duplicates = 2 * time.Minute // as the previous build declared it
		if _, err := js.CreateStream(ctx, old); err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, shared.SiblingPrefix(shared.SubjectAuditPrefix, i)+"keyworker.xks.ks", []byte("event")); err != nil {
			t.Fatal(err)
		}
	}
	if err := Bootstrap(ctx, js, topo, []string{"default"}); err != nil {
		t.Fatal(err)
	}
	for i := range topo.Siblings {
		s, err := js.Stream(ctx, shared.SiblingStream(shared.StreamAudit, i))
		if err != nil {
			t.Fatal(err)
		}
		info := s.CachedInfo()
		if info.Config.Duplicates != AuditDuplicateWindow || info.State.Msgs != 1 {
			t.Fatalf("sibling %d after the upgrade: window %v, %d events", i, info.Config.Duplicates, info.State.Msgs)
		}
	}
}
