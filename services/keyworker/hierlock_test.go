package keyworker

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Keyworker processes of one pool unsealed at the same moment, each with
// its own PKCS#11 module instance on ONE token, create the key hierarchy
// exactly once. (Within one process the module serialises them anyway; the
// race is between processes, so the keyworkers are child processes.)
//
// Not parallel: tokens other tests create meanwhile in the shared SoftHSM
// directory make a child's slot scan fail now and then.
func TestHierarchyCreatedOnceBySimultaneousKeyworkers(t *testing.T) {
	ns, _, _ := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	for round := range 3 {
		module, label, pin := hsmtest.NewToken(t)
		const n = 4
		// Every child seals at this instant, after its hierarchy step: the
		// seal key must exist by then, or each would create one.
		sealAt := strconv.FormatInt(time.Now().Add(3*time.Second).UnixNano(), 10)
		var wg sync.WaitGroup
		outs := make([][]byte, n)
		errs := make([]error, n)
		for i := range n {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHierarchyChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "SOVKEYS_HIER_CHILD=1", "SOVKEYS_HIER_NATS="+ns.ClientURL(),
				"SOVKEYS_HIER_MODULE="+module, "SOVKEYS_HIER_LABEL="+label, "SOVKEYS_HIER_PIN="+pin,
				"SOVKEYS_HIER_POOL=p"+strconv.Itoa(round), "SOVKEYS_HIER_SEAL_AT="+sealAt, "SOFTHSM2_CONF="+hsmtest.ConfPath())
			wg.Go(func() { outs[i], errs[i] = cmd.CombinedOutput() })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d keyworker %d: %v\n%s", round, i, err, outs[i])
			}
		}
		// A fresh session finds exactly one of each key: two under one
		// label are an error.
		fresh, err := OpenHSM(ctx, HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 1}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := fresh.EnsureHierarchy(ctx); err != nil {
			t.Fatalf("round %d: token holds a broken hierarchy: %v", round, err)
		}
		if _, err := fresh.PublicKey(ctx, hsm.SigningKeyLabel); err != nil {
			t.Fatal(err)
		}
		// One seal key: what each child sealed opens here.
		for i, out := range outs {
			blob := sealedLine(out)
			if blob == nil {
				t.Fatalf("round %d keyworker %d sealed nothing:\n%s", round, i, out)
			}
			if pt, err := fresh.Unseal(ctx, blob, []byte("hier")); err != nil || string(pt) != "child" {
				t.Fatalf("round %d: keyworker %d's sealed blob: %q %v", round, i, pt, err)
			}
		}
		_ = fresh.Close()
	}
}

// TestHierarchyChild is one keyworker process of the test above.
func TestHierarchyChild(t *testing.T) {
	if os.Getenv("SOVKEYS_HIER_CHILD") != "1" {
		t.Skip("child process of TestHierarchyCreatedOnceBySimultaneousKeyworkers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	nc, err := nats.Connect(os.Getenv("SOVKEYS_HIER_NATS"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	store, err := writeonce.NewJetStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	var h *HSM
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() (err error) {
		h, err = OpenHSM(ctx, HSMConfig{ModulePath: os.Getenv("SOVKEYS_HIER_MODULE"), TokenLabel: os.Getenv("SOVKEYS_HIER_LABEL"),
			PIN: os.Getenv("SOVKEYS_HIER_PIN"), Sessions: 2}, slog.New(slog.DiscardHandler))
		return err
	})
	defer h.Close()
	s, err := New(Config{Pool: os.Getenv("SOVKEYS_HIER_POOL"), Model: "SoftHSMv2", Topology: mesh.DefaultTopology(), HealthTTL: time.Second},
		Deps{NC: nc, JS: js, HSM: h, EKTs: store, Logger: slog.New(slog.DiscardHandler), Tracer: noop.NewTracerProvider(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ensureHierarchyLocked(ctx); err != nil {
		t.Fatal(err)
	}
	if at, err := strconv.ParseInt(os.Getenv("SOVKEYS_HIER_SEAL_AT"), 10, 64); err == nil {
		time.Sleep(time.Until(time.Unix(0, at)))
	}
	blob, err := h.Seal(ctx, []byte("child"), []byte("hier"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("sealed=%s\n", hex.EncodeToString(blob))
}

// sealedLine finds the blob a child printed.
func sealedLine(out []byte) []byte {
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "sealed="); ok {
			b, err := hex.DecodeString(strings.TrimSpace(v))
			if err == nil {
				return b
			}
		}
	}
	return nil
}

// A lease held by a live keyworker is waited for; one left by a dead
// keyworker (older than the TTL) is taken over.
func TestHierarchyLease(t *testing.T) {
	_, nc, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	kv, err := mesh.EnsureBucket(ctx, js, shared.BucketPKI, "test", mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{js: js, nc: nc, log: slog.New(slog.DiscardHandler), now: time.Now}
	key := shared.PKIHierarchyLock("lease")
	release, err := s.acquireLease(ctx, kv, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	short, stop := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := s.acquireLease(short, kv, key, time.Minute); err == nil {
		t.Fatal("a held lease was acquired twice")
	}
	stop()
	release()
	again, err := s.acquireLease(ctx, kv, key, time.Minute)
	if err != nil {
		t.Fatalf("released lease: %v", err)
	}
	_ = again // its holder "dies" without releasing
	late := &Service{js: js, nc: nc, log: slog.New(slog.DiscardHandler), now: func() time.Time { return time.Now().Add(2 * time.Minute) }}
	if _, err := late.acquireLease(ctx, kv, key, time.Minute); err != nil {
		t.Fatalf("stale lease not taken over: %v", err)
	}
}
