package mesh

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A publish while no stream answers (as during a leader election) is
// retried until the stream is back, within the deadline, and lands once.
func TestPublishWithinRetriesUntilTheStreamAnswers(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := func() *nats.Msg {
		m := nats.NewMsg("pw.x")
		m.Data = []byte("work")
		m.Header.Set(jetstream.MsgIDHeader, "req-1")
		return m
	}
	created := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // the "election"
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PW", Subjects: []string{"pw.>"}, Duplicates: time.Minute})
		created <- err
	}()
	if _, err := PublishWithin(ctx, js, msg(), 50*time.Millisecond); err != nil {
		t.Fatalf("publish across the gap: %v", err)
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	ack, err := PublishWithin(ctx, js, msg(), 50*time.Millisecond)
	if err != nil || !ack.Duplicate {
		t.Fatalf("retried publish not de-duplicated: %+v %v", ack, err)
	}
	s, _ := js.Stream(ctx, "PW")
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream holds %+v, %v", info.State, err)
	}

	// Deadline reached: the last transient error is returned, in time.
	short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
	defer stop()
	m := msg()
	m.Subject = "nowhere.x"
	start := time.Now()
	if _, err := PublishWithin(short, js, m, 50*time.Millisecond); !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("publish outlived its deadline: %v", waited)
	}
	// Without a deadline or a de-duplication id there is no retry.
	bare := nats.NewMsg("nowhere.y")
	if _, err := PublishWithin(context.Background(), js, m, 50*time.Millisecond); err == nil {
		t.Fatal("published to nowhere")
	}
	if _, err := PublishWithin(ctx, js, bare, 50*time.Millisecond); !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("bare publish: %v", err)
	}
}
