package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker/keyworkertest"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// runAuditKeyworker runs a keyworker of pool "default" on a fresh SoftHSM token: the
// HSM that signs audit checkpoints.
func runAuditKeyworker(t testing.TB, nc *nats.Conn, js jetstream.JetStream) {
	t.Helper()
	keyworkertest.Run(t, nc, js, slog.New(slog.DiscardHandler))
}

// auditEvent is the i-th event of sc as service svc audits it.
func auditEvent(sc auditlog.Scope, svc string, i int) *shared.AuditEvent {
	now := time.Now()
	id := fmt.Sprintf("%s-%s-%d", sc.Kind, sc.Token(), i)
	if sc.Kind == shared.AuditKindOperator {
		// Only the operator CLI may write the operator log.
		id, svc = id+"-"+svc, shared.AuditServiceCLI
	}
	return &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: id,
		Kind: sc.Kind, Scope: sc.ID, API: shared.APIVSDecrypt, Service: svc, Start: now, End: now,
		CallerType: "instance", CallerID: "i-0123", SourceIP: "10.1.2.3", Result: shared.ResultSuccess,
	}
}

// publishEvents publishes events as the services do and waits for the acks.
func publishEvents(t testing.TB, js jetstream.JetStream, evs []*shared.AuditEvent) {
	t.Helper()
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
	timeout := time.After(time.Minute)
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		case <-timeout:
			t.Fatal("publish: no ack")
		}
	}
}

// checkRecordedOnce waits until the log of sc holds exactly the events
// want, each once, numbered 1..len(want).
func checkRecordedOnce(t testing.TB, js jetstream.JetStream, sc auditlog.Scope, want map[string]bool) {
	t.Helper()
	testkit.CheckFor(t, 90*time.Second, 200*time.Millisecond, func() error {
		seen := map[string]uint64{}
		var n uint64
		err := auditlog.StreamSource{JS: js}.Records(context.Background(), sc, func(_ uint64, data []byte, err error) error {
			if err != nil {
				return err
			}
			r, err := auditlog.ParseRecord(data)
			if err != nil {
				return err
			}
			n++
			if r.Seq != n {
				t.Fatalf("%s: record %d carries sequence %d (gap or reordering)", sc, n, r.Seq)
			}
			if first, dup := seen[r.DedupeID()]; dup {
				t.Fatalf("%s: event %s numbered twice: %d and %d", sc, r.RequestID, first, r.Seq)
			}
			if !want[r.DedupeID()] {
				t.Fatalf("%s: record %d is an event nobody published: %s", sc, r.Seq, r.RequestID)
			}
			seen[r.DedupeID()] = r.Seq
			return nil
		})
		if err != nil {
			return err
		}
		if len(seen) != len(want) {
			return fmt.Errorf("%s: %d of %d events recorded", sc, len(seen), len(want))
		}
		return nil
	})
}

// publishedKey waits for the audit public key in KV.
func publishedKey(t testing.TB, js jetstream.JetStream) []byte {
	t.Helper()
	var spki []byte
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		kv, err := js.KeyValue(context.Background(), shared.BucketPKI)
		if err != nil {
			return err
		}
		e, err := kv.Get(context.Background(), auditlog.PKIKey("default"))
		if err != nil {
			return err
		}
		spki = e.Value()
		return nil
	})
	return spki
}
