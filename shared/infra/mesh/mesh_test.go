package mesh

import (
	"context"
	"errors"
	"testing"

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
