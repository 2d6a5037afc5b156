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
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/auditlog"
	"github.com/sovkeys/sovkeys/shared/ektstore"
	"github.com/sovkeys/sovkeys/shared/hsmtest"
	"github.com/sovkeys/sovkeys/shared/kwadmin"
	"github.com/sovkeys/sovkeys/shared/mesh"
)

// runAuditKeyworker runs a keyworker of pool "default" in this process on a
// fresh SoftHSM token: the HSM that signs audit checkpoints.
func runAuditKeyworker(t testing.TB, nc *nats.Conn, js jetstream.JetStream) {
	t.Helper()
	module, label, pin := hsmtest.NewToken(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	logger := slog.New(slog.DiscardHandler)
	h, err := keyworker.OpenHSM(ctx, keyworker.HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 4}, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	store, err := ektstore.NewJetStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	kw, err := keyworker.New(keyworker.Config{Pool: "default", Model: "SoftHSMv2", Topology: mesh.DefaultTopology(), HealthTTL: time.Second},
		keyworker.Deps{NC: nc, JS: js, HSM: h, EKTs: store, Logger: logger, Tracer: noop.NewTracerProvider(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		if err := kw.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("keyworker: %v", err)
		}
	}()
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		return kwadmin.Call(ctx, nc, "default", kwadmin.EndpointHealth, struct{}{}, nil)
	})
}

// auditEvent is the i-th event of sc as service svc audits it.
func auditEvent(sc auditlog.Scope, svc string, i int) *shared.AuditEvent {
	now := time.Now()
	return &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: fmt.Sprintf("%s-%s-%d", sc.Kind, sc.Token(), i),
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
	checkFor(t, 90*time.Second, 200*time.Millisecond, func() error {
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
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
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
