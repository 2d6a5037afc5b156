package keyworker

import (
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// fakeClock is a settable clock shared by the test's keyworkers.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestAutomaticRotation: two keyworkers of one pool share a token and a
// rotation period; when the period passes exactly one rotates, once, and
// the change is audited with the version.
func TestAutomaticRotation(t *testing.T) {
	_, nc, js := natstest.Run(t)
	ctx := t.Context()
	topo := mesh.DefaultTopology()
	if _, err := mesh.EnsureAuditStreams(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	module, token, pin := hsmtest.NewToken(t)
	clock := &fakeClock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	var kws []*Service
	for range 2 {
		h, err := OpenHSM(ctx, HSMConfig{ModulePath: module, TokenLabel: token, PIN: pin, Sessions: 1, Now: clock.now}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Close() })
		kws = append(kws, &Service{cfg: Config{Pool: "default", Topology: topo}, nc: nc, js: js, hsm: h, log: slog.New(slog.DiscardHandler), now: clock.now})
	}
	if _, err := kws[0].hsm.CreateAESKey(ctx, "auto", true, true); err != nil {
		t.Fatal(err)
	}
	req := kwadmin.KeyVersionRequest{Label: "auto", Action: kwadmin.VersionSchedule, Keystore: "ks", KeyID: "k1", EverySeconds: 1}
	if _, err := kws[0].changeVersion(ctx, req); !errors.Is(err, shared.ErrValidation) {
		t.Fatalf("a one-second period = %v, want ValidationException", err)
	}
	req.EverySeconds = int64((30 * 24 * time.Hour) / time.Second)
	resp, err := kws[0].changeVersion(ctx, req)
	if err != nil || resp.RotateEverySeconds != req.EverySeconds || resp.NextRotation != "2026-12-29T12:00:00Z" {
		t.Fatalf("schedule = %+v, %v", resp, err)
	}
	due := func() int {
		n := 0
		for _, kw := range kws {
			got, err := kw.rotationDue(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n += got
		}
		return n
	}
	if n := due(); n != 0 {
		t.Fatalf("%d rotations before the period passed", n)
	}
	clock.add(30*24*time.Hour + time.Minute)
	if n := due(); n != 1 {
		t.Fatalf("%d rotations when due, want exactly 1", n)
	}
	if n := due(); n != 0 {
		t.Fatalf("%d rotations right after, want 0", n)
	}
	vs, err := kws[1].hsm.KeyVersions(ctx, "auto")
	if err != nil || len(vs) != 2 {
		t.Fatalf("versions after one period = %+v, %v", vs, err)
	}
	clock.add(30 * 24 * time.Hour)
	if n := due(); n != 1 {
		t.Fatalf("%d rotations in the second period, want 1", n)
	}
	// The rotation is in the key store's audit log with its version.
	stream, err := js.Stream(ctx, shared.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, shared.AuditSubject(shared.AuditServiceKeyworker, shared.AuditKindXKS, "ks"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := shared.UnmarshalAuditEvent(msg.Data)
	if err != nil || ev.API != "xks.key.version.auto-rotate" || ev.Params["key_version"] != "3" || ev.KeyID != "k1" || ev.Result != shared.ResultSuccess {
		t.Fatalf("audit event = %+v, %v", ev, err)
	}
	// Clearing the period stops it.
	req.EverySeconds = 0
	if _, err := kws[1].changeVersion(ctx, req); err != nil {
		t.Fatal(err)
	}
	clock.add(365 * 24 * time.Hour)
	if n := due(); n != 0 {
		t.Fatalf("%d rotations after clearing the period", n)
	}
	if vs, _ := kws[0].hsm.KeyVersions(ctx, "auto"); len(vs) != 3 {
		t.Fatalf("%d versions, want 3", len(vs))
	}
}
