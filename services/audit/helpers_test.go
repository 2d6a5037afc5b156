package audit

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/services/keyworker/keyworkertest"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// How long the tests wait for the services' asynchronous work, and how
// often they look. Generous: the machine is shared, and a test must not
// depend on its speed.
const (
	recordWait = time.Minute            // events numbered, logs verified
	statsWait  = 30 * time.Second       // published key, stats after an outage
	drainWait  = 20 * time.Second       // export lag back to zero
	pollEvery  = 50 * time.Millisecond  // between polls
	slowPoll   = 100 * time.Millisecond // between polls that read a whole log
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SOVKEYS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// runKeyworker runs a keyworker of pool "default" on a fresh SoftHSM token: the
// HSM that signs audit checkpoints.
func runKeyworker(t testing.TB, nc *nats.Conn, js jetstream.JetStream) {
	t.Helper()
	keyworkertest.Run(t, nc, js, testLogger(t))
}

// runAudit runs an audit service in this process until the test ends (or
// stop is called).
func runAudit(t testing.TB, nc *nats.Conn, js jetstream.JetStream, cfg Config) (svc *Service, stop func()) {
	t.Helper()
	siblings := cfg.Topology.Siblings
	cfg.Topology = mesh.DefaultTopology()
	cfg.Topology.Siblings = siblings
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = 100 * time.Millisecond
	}
	if cfg.MaxExportBackoff == 0 {
		cfg.MaxExportBackoff = time.Second
	}
	svc, err := New(cfg, Deps{NC: nc, JS: js, Logger: testLogger(t), Tracer: noop.NewTracerProvider(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("audit: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return svc, stop
}

// event returns the i-th test event of scope sc from service svc.
func event(sc auditlog.Scope, svc string, i int) *shared.AuditEvent {
	now := time.Now()
	id := fmt.Sprintf("req-%s-%s-%06d", sc.Kind, sc.Token(), i)
	if sc.Kind == shared.AuditKindOperator {
		// Only the operator CLI may write the operator log (origin.go).
		id, svc = id+"-"+svc, shared.AuditServiceCLI
	}
	return &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: id, Kind: sc.Kind, Scope: sc.ID,
		API: shared.APIXKSEncrypt, Service: svc, Start: now.Add(-time.Millisecond), End: now,
		CallerType: "sigv4", CallerID: "AKIAEXAMPLE", SourceIP: "192.0.2.10", KeyID: "key-1",
		Result: shared.ResultSuccess, Params: map[string]string{"plaintext_bytes": "32"},
	}
}

// publishAsync publishes events as the services do (Nats-Msg-Id =
// service:request id) and waits for every ack.
func publishAsync(t testing.TB, js jetstream.JetStream, evs []*shared.AuditEvent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var futures []jetstream.PubAckFuture
	for _, ev := range evs {
		data, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(ev.Subject())
		m.Data = data
		m.Header.Set(shared.HeaderMsgID, ev.Service+":"+ev.RequestID)
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish audit event: %v", err)
		case <-ctx.Done():
			t.Fatal("publish audit event: timeout")
		}
	}
}

// recorded reads every record of sc from the log stream.
// publishOn publishes ev on audit event stream sibling i as its publisher
// would, marked as a failover copy if failover.
func publishOn(t testing.TB, js jetstream.JetStream, i int, ev *shared.AuditEvent, failover bool) {
	t.Helper()
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(shared.AuditSubjectOn(i, ev.Service, ev.Kind, ev.Scope))
	m.Data = data
	m.Header.Set(shared.HeaderMsgID, shared.AuditMsgID(ev.Service, ev.RequestID))
	if failover {
		m.Header.Set(mesh.HeaderFailover, "1")
	}
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func recorded(ctx context.Context, js jetstream.JetStream, sc auditlog.Scope) ([]*auditlog.Record, error) {
	var out []*auditlog.Record
	err := auditlog.StreamSource{JS: js}.Records(ctx, sc, func(_ uint64, data []byte, err error) error {
		if err != nil {
			return err
		}
		r, err := auditlog.ParseRecord(data)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// waitRecorded waits until sc holds n records and checks they are the
// events want (by dedupe id), each exactly once, numbered 1..n.
func waitRecorded(t testing.TB, js jetstream.JetStream, sc auditlog.Scope, want map[string]bool) {
	t.Helper()
	ctx := context.Background()
	testkit.CheckFor(t, recordWait, pollEvery, func() error {
		recs, err := recorded(ctx, js, sc)
		if err != nil {
			return err
		}
		if len(recs) < len(want) {
			return fmt.Errorf("%s: %d of %d records", sc, len(recs), len(want))
		}
		seen := map[string]bool{}
		for i, r := range recs {
			if r.Seq != uint64(i+1) {
				t.Fatalf("%s: record %d has sequence %d", sc, i+1, r.Seq)
			}
			if seen[r.DedupeID()] {
				t.Fatalf("%s: event %q numbered twice (again at %d)", sc, r.RequestID, r.Seq)
			}
			if !want[r.DedupeID()] {
				t.Fatalf("%s: record %d is an unexpected event %q", sc, r.Seq, r.RequestID)
			}
			seen[r.DedupeID()] = true
		}
		return nil
	})
}

// auditKey returns the published audit public key.
func auditKey(t testing.TB, js jetstream.JetStream) *ecdsa.PublicKey {
	t.Helper()
	var pub *ecdsa.PublicKey
	testkit.CheckFor(t, statsWait, pollEvery, func() error {
		kv, err := js.KeyValue(context.Background(), shared.BucketPKI)
		if err != nil {
			return err
		}
		e, err := kv.Get(context.Background(), auditlog.PKIKey("default"))
		if err != nil {
			return err
		}
		pub, err = auditlog.ParsePublicKey(e.Value())
		return err
	})
	return pub
}

// verified waits until bucket holds sc's transparency log of records
// records, signed, and verifies it completely with only the public key.
func verified(t testing.TB, bucket auditlog.Bucket, sc auditlog.Scope, pub *ecdsa.PublicKey, records uint64) *auditlog.TlogReport {
	t.Helper()
	var rep *auditlog.TlogReport
	testkit.CheckFor(t, recordWait, slowPoll, func() error {
		var err error
		rep, err = auditlog.VerifyTlog(context.Background(), bucket, sc, trust(pub), auditlog.TlogOptions{})
		if err != nil {
			return err
		}
		if rep.Size != int64(records) {
			return fmt.Errorf("%s: verified 1..%d of %d", sc, rep.Size, records)
		}
		return nil
	})
	return rep
}

func trust(pub *ecdsa.PublicKey) auditlog.Trust {
	return auditlog.Trust{Deployment: DefaultDeployment, LogKey: pub}
}

func ids(evs []*shared.AuditEvent) map[string]bool {
	m := make(map[string]bool, len(evs))
	for _, ev := range evs {
		m[auditlog.DedupeID(ev.Service, ev.RequestID)] = true
	}
	return m
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
