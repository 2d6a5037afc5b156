package mesh

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func requestMsg(id string) *nats.Msg {
	m := nats.NewMsg(shared.RequestSubject(shared.APIXKSEncrypt))
	m.Data = []byte("work")
	if id != "" {
		m.Header.Set(jetstream.MsgIDHeader, id)
	}
	return m
}

// A publish while no stream answers (as during a leader election) is
// retried until the stream is back, within the deadline, and lands once.
func TestPublishRetriesUntilTheStreamAnswers(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // the "election"
		_, err := js.CreateStream(ctx, RequestStreamConfig(DefaultTopology(), 0))
		created <- err
	}()
	if _, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, requestMsg("req-1"), 50*time.Millisecond); err != nil {
		t.Fatalf("publish across the gap: %v", err)
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	ack, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, requestMsg("req-1"), 50*time.Millisecond)
	if err != nil || !ack.Duplicate {
		t.Fatalf("retried publish not de-duplicated: %+v %v", ack, err)
	}
	s, _ := js.Stream(ctx, shared.StreamRequests)
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream holds %+v, %v", info.State, err)
	}

	// Deadline reached: the last transient error is returned, in time.
	short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
	defer stop()
	start := time.Now()
	if _, err := PublishWork(short, js, "nopool", shared.APIXKSEncrypt, requestMsg("req-2"), 50*time.Millisecond); !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("publish outlived its deadline: %v", waited)
	}
	// Without a de-duplication id there is one attempt.
	if _, err := PublishWork(ctx, js, "nopool", shared.APIXKSEncrypt, requestMsg(""), 50*time.Millisecond); !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("bare publish: %v", err)
	}
}

// With siblings, a publish whose own sibling does not answer lands on the
// next one, marked as a failover, and the dead sibling is avoided after.
func TestPublishFailsOverToASibling(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	topo := DefaultTopology()
	topo.Siblings = 3
	streams, err := EnsureRequestStreams(ctx, js, topo)
	if err != nil || len(streams) != 3 || Siblings(js) != 3 {
		t.Fatalf("siblings: %d %v (recorded %d)", len(streams), err, Siblings(js))
	}
	// Find an id whose own sibling is 1, then take sibling 1 away (its
	// subjects no longer captured: "no responders", as with no leader).
	id := ""
	for i := 0; id == ""; i++ {
		cand := "req-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if stateOf(js).order(cand, 3, func(i int) string { return "x" }, time.Now())[0] == 1 {
			id = cand
		}
	}
	cfg := RequestStreamConfig(topo, 1)
	cfg.Subjects = []string{"parked.>"}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	ack, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, requestMsg(id), 50*time.Millisecond)
	if err != nil {
		t.Fatalf("failover publish: %v", err)
	}
	if ack.Stream != shared.SiblingStream(shared.StreamRequests, 2) {
		t.Fatalf("landed on %s, want the next sibling", ack.Stream)
	}
	m, err := streams[2].GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(HeaderFailover) == "" || m.Subject != shared.RequestSubjectOn(2, shared.APIXKSEncrypt) {
		t.Fatalf("failover copy: subject %s header %v", m.Subject, m.Header)
	}
	// Its "no responders" may come after a hedge won: it marks the
	// sibling down when it does.
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !stateOf(js).isDown(shared.SiblingStream(shared.StreamRequests, 1), time.Now()) {
			return errors.New("the silent sibling is not avoided")
		}
		return nil
	})
	// Another request for sibling 1 goes straight to a live one now.
	if ack, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, requestMsg(id+"-2"), 50*time.Millisecond); err != nil || ack.Stream == shared.SiblingStream(shared.StreamRequests, 1) {
		t.Fatalf("second publish: %+v %v", ack, err)
	}
}
