package audit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func TestAuditConfigValidate(t *testing.T) {
	ok := Config{Topology: mesh.DefaultTopology()}
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"sign pool":         func(c *Config) { c.SignPool = "Bad Pool" },
		"slow cadence":      func(c *Config) { c.CheckpointEvery = 2 * time.Second },
		"short ack wait":    func(c *Config) { c.AckWait = time.Second },
		"batch":             func(c *Config) { c.MaxBatch = 5000 },
		"backend":           func(c *Config) { c.Central.Backend = "ftp" },
		"s3 without bucket": func(c *Config) { c.Central.Backend = BackendS3; c.Central.S3.Region = "us-east-1" },
		"tenant s3":         func(c *Config) { c.TenantExport.Enabled = true },
		"topology":          func(c *Config) { c.Topology.Replicas = 0 },
	} {
		c := ok
		mutate(&c)
		if err := c.Validate(); !errors.Is(err, shared.ErrConfigValidation) {
			t.Errorf("%s: Validate = %v, want ErrConfigValidation", name, err)
		}
	}
}

// Two audit services sequence a burst across the three kinds of scope at
// once: every scope is gapless, every event is recorded once, the chains
// verify with the HSM key from the stream and from the exported objects.
func TestAuditSequenceCheckpointExport(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	a, _ := runAudit(t, nc, js, Config{})
	b, _ := runAudit(t, nc, js, Config{MaxBatch: 7})

	scopes := []auditlog.Scope{
		{Kind: shared.AuditKindTenant, ID: "vpc-0abc"},
		{Kind: shared.AuditKindXKS, ID: "store/one"},
		{Kind: shared.AuditKindOperator, ID: ""},
	}
	want := map[auditlog.Scope][]*shared.AuditEvent{}
	var all []*shared.AuditEvent
	for i := 0; i < 600; i++ {
		sc := scopes[i%len(scopes)]
		// authn and keyworker each audit the same request: two records.
		for _, svc := range []string{"authn", "keyworker"} {
			ev := event(sc, svc, i)
			want[sc] = append(want[sc], ev)
			all = append(all, ev)
		}
	}
	publishAsync(t, js, all)
	pub := auditKey(t, js)
	obs, err := auditlog.OpenObjectBucket(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scopes {
		waitRecorded(t, js, sc, ids(want[sc]))
		n := uint64(len(want[sc]))
		rep := verified(t, obs, sc, pub, n)
		if rep.First != 1 || rep.Last != n || rep.History == 0 {
			t.Fatalf("%s: report %+v", sc, rep)
		}
	}
	sa, sb := a.Snapshot(), b.Snapshot()
	if sa.Records+sb.Records < uint64(len(all)) {
		t.Fatalf("records committed: %d + %d < %d", sa.Records, sb.Records, len(all))
	}
	if sa.Checkpoints+sb.Checkpoints == 0 {
		t.Fatal("no checkpoints counted")
	}
	testkit.CheckFor(t, drainWait, slowPoll, func() error {
		x := a.Snapshot().Export["central"]
		if x == nil || x.Lag != 0 || a.Snapshot().SequencingLag != 0 {
			return fmt.Errorf("lag not drained: %+v", x)
		}
		return nil
	})
}

// A recreated consumer delivers old events again as first deliveries; the
// service recognises them as recorded.
func TestAuditRecreatedConsumerDoesNotRenumber(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-1"}
	var evs []*shared.AuditEvent
	for i := range 50 {
		evs = append(evs, event(sc, "keyworker", i))
	}
	publishAsync(t, js, evs)
	_, stop := runAudit(t, nc, js, Config{})
	waitRecorded(t, js, sc, ids(evs))
	stop()

	ctx := context.Background()
	if err := js.DeleteConsumer(ctx, shared.StreamAudit, shared.ConsumerAudit); err != nil {
		t.Fatal(err)
	}
	more := []*shared.AuditEvent{event(sc, "keyworker", 1000), event(sc, "authn", 1000)}
	publishAsync(t, js, more)
	svc, _ := runAudit(t, nc, js, Config{})
	all := ids(append(evs, more...))
	waitRecorded(t, js, sc, all)
	testkit.CheckFor(t, drainWait, pollEvery, func() error {
		if st := svc.Snapshot(); st.Duplicates < uint64(len(evs)) {
			return fmt.Errorf("duplicates %d", st.Duplicates)
		}
		return nil
	})
	recs, err := recorded(ctx, js, sc)
	if err != nil || len(recs) != len(all) {
		t.Fatalf("%d records, want %d (%v)", len(recs), len(all), err)
	}
}

// A publisher that failed over stored the same event on two audit stream
// siblings (its first try's ack was lost): the audit service reads every
// sibling and numbers the event once.
func TestAuditSiblingCopiesNumberedOnce(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	topo.Siblings = 3
	if _, err := mesh.EnsureAuditStreams(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	sc := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "/siblings"}
	var evs []*shared.AuditEvent
	for i := range 40 {
		evs = append(evs, event(sc, "keyworker", i))
	}
	publishAsync(t, js, evs) // sibling 0, as first tries
	_, stop := runAudit(t, nc, js, Config{Topology: topo})
	waitRecorded(t, js, sc, ids(evs))
	stop()
	// Past the margin that makes events older than their consumer suspect.
	time.Sleep(2500 * time.Millisecond)
	// The same events again on siblings 1 and 2: half as failover copies
	// (marked), half as first tries held back by an election (delivered
	// late: the service is down past lateDelivery); plus new events there.
	for i, ev := range evs {
		publishOn(t, js, 1+i%2, ev, i%2 == 0)
	}
	more := []*shared.AuditEvent{event(sc, "keyworker", 100), event(sc, "authn", 100)}
	for i, ev := range more {
		publishOn(t, js, 1+i, ev, false)
	}
	time.Sleep(lateDelivery + 500*time.Millisecond)
	_, _ = runAudit(t, nc, js, Config{Topology: topo})
	waitRecorded(t, js, sc, ids(append(evs, more...)))
	// Every sibling drained: nothing left that could be numbered later.
	testkit.CheckFor(t, drainWait, pollEvery, func() error {
		for i := range 3 {
			c, err := js.Consumer(ctx, shared.SiblingStream(shared.StreamAudit, i), shared.ConsumerAudit)
			if err != nil {
				return err
			}
			info, err := c.Info(ctx)
			if err != nil {
				return err
			}
			if info.NumPending+uint64(info.NumAckPending) > 0 {
				return fmt.Errorf("sibling %d: %d pending, %d unacked", i, info.NumPending, info.NumAckPending)
			}
		}
		return nil
	})
	recs, err := recorded(ctx, js, sc)
	if err != nil || len(recs) != len(evs)+len(more) {
		t.Fatalf("%d records, want %d (%v)", len(recs), len(evs)+len(more), err)
	}
}

// `sovkeys audit checkpoint` asks the service over NATS.
func TestAuditCheckpointOnDemand(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	runAudit(t, nc, js, Config{CheckpointEvery: time.Second})
	sc := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "demand"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	req := func(sc auditlog.Scope) (auditlog.TreeHead, error) {
		data, _ := jsonMarshal(auditlog.CheckpointRequest{Kind: sc.Kind, Scope: sc.ID})
		m, err := nc.RequestWithContext(ctx, auditlog.SubjectControlPrefix+"."+auditlog.EndpointCheckpoint, data)
		if err != nil {
			return auditlog.TreeHead{}, err
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			return auditlog.TreeHead{}, fmt.Errorf("%s: %s", code, m.Header.Get("Nats-Service-Error"))
		}
		th, _, err := trust(auditKey(t, js)).OpenCheckpoint(m.Data, sc)
		return th, err
	}
	if _, err := req(sc); err == nil {
		t.Fatal("checkpoint of an empty log succeeded")
	}
	evs := []*shared.AuditEvent{event(sc, "keyworker", 1), event(sc, "keyworker", 2)}
	publishAsync(t, js, evs)
	waitRecorded(t, js, sc, ids(evs))
	cp, err := req(sc)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != 2 {
		t.Fatalf("checkpoint at %d, want 2", cp.Size)
	}
	stream, err := js.Stream(ctx, auditlog.StreamLog)
	if err != nil {
		t.Fatal(err)
	}
	// The log cannot be purged or have messages deleted.
	if err := stream.Purge(ctx); err == nil {
		t.Fatal("audit log purge allowed")
	}
	if err := stream.DeleteMsg(ctx, 1); err == nil {
		t.Fatal("audit log message delete allowed")
	}
	if _, err := js.Stream(ctx, shared.StreamAudit); errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatal("event stream missing")
	}
}

// A publisher's failover copy can be numbered before its original, which
// is then stored late on its own sibling and delivered at once (neither
// redelivered nor late): the original is still not numbered again, by the
// process that numbered the copy nor by one that loads the scope's head
// afresh (the copy watch travels in the log stream's batch headers).
func TestAuditOriginalAfterCopyNumberedOnce(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	topo.Siblings = 2
	if _, err := mesh.EnsureAuditStreams(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	same := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "/copy-same"}
	fresh := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "/copy-fresh"}
	_, stop := runAudit(t, nc, js, Config{Topology: topo})
	for _, sc := range []auditlog.Scope{same, fresh} {
		publishOn(t, js, 1, event(sc, "keyworker", 1), true)
		waitRecorded(t, js, sc, ids([]*shared.AuditEvent{event(sc, "keyworker", 1)}))
	}
	check := func(sc auditlog.Scope) {
		t.Helper()
		// Past the margin that makes events older than their consumer suspect.
		time.Sleep(2500 * time.Millisecond)
		publishOn(t, js, 0, event(sc, "keyworker", 1), false) // the original
		publishOn(t, js, 0, event(sc, "keyworker", 2), false) // then a new event
		waitRecorded(t, js, sc, ids([]*shared.AuditEvent{event(sc, "keyworker", 1), event(sc, "keyworker", 2)}))
		recs, err := recorded(ctx, js, sc)
		if err != nil || len(recs) != 2 {
			t.Fatalf("%s: %d records, want 2 (%v)", sc, len(recs), err)
		}
	}
	check(same)
	stop()
	_, _ = runAudit(t, nc, js, Config{Topology: topo}) // loads the head afresh
	check(fresh)
}
