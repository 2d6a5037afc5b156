package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A record batch appended to the log by anything but the sequencer (the
// audit credential may publish there) that does not chain is never
// logged nor signed: the scope's export stalls with an alarm.
func TestNonChainingRecordIsNotSigned(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	svc, _ := runAudit(t, nc, js, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sc := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "chain/victim"}
	var evs []*shared.AuditEvent
	for i := range 5 {
		evs = append(evs, event(sc, shared.AuditServiceKeyworker, i))
	}
	publishAsync(t, js, evs)
	waitRecorded(t, js, sc, ids(evs))
	signed := func() int64 {
		st, err := svc.signer.state(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size
	}
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := signed(); n != 5 {
			return fmt.Errorf("signed size %d", n)
		}
		return nil
	})
	before := svc.Snapshot().CheckpointErrors

	for name, prev := range map[string]auditlog.Hash{"prev of the genesis": auditlog.Genesis, "prev of nothing": auditlog.HashOf([]byte("x"))} {
		r := auditlog.FromEvent(event(sc, shared.AuditServiceKeyworker, 99), 6, prev)
		data, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(sc.RecordSubject())
		m.Data = data
		m.Header.Set(auditlog.HeaderBatch, "6-6")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if svc.Snapshot().CheckpointErrors <= before {
			return fmt.Errorf("no alarm for the non-chaining batch")
		}
		return nil
	})
	time.Sleep(time.Second) // a few export rounds
	if n := signed(); n != 5 {
		t.Fatalf("a non-chaining record was signed: size %d", n)
	}
}
