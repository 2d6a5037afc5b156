package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var fast = Backoff{Min: time.Millisecond, Max: 4 * time.Millisecond}

func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("x: %w", shared.ErrConfigValidation), true},
		{&os.PathError{Op: "open", Path: "/nope", Err: os.ErrNotExist}, true},
		{fmt.Errorf("connect: %w", nats.ErrAuthorization), true},
		{&net.OpError{Op: "listen", Err: errors.New("address already in use")}, true},
		{fmt.Errorf("stream: %w", nats.ErrNoResponders), false},
		{fmt.Errorf("stream: %w", context.DeadlineExceeded), false},
		{fmt.Errorf("connect: %w", nats.ErrNoServers), false},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, false},
		{errors.New("no meta leader"), false},
		{nil, false},
	} {
		if got := Permanent(tc.err); got != tc.want {
			t.Errorf("Permanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetryWaitsOutTransientErrors(t *testing.T) {
	n := 0
	err := Retry(context.Background(), quiet, "test", fast, func(context.Context) error {
		if n++; n < 4 {
			return fmt.Errorf("lookup: %w", context.DeadlineExceeded)
		}
		return nil
	})
	if err != nil || n != 4 {
		t.Fatalf("err %v after %d attempts", err, n)
	}
	n = 0
	err = Retry(context.Background(), quiet, "test", fast, func(context.Context) error {
		n++
		return fmt.Errorf("x: %w", nats.ErrAuthorization)
	})
	if !errors.Is(err, nats.ErrAuthorization) || n != 1 {
		t.Fatalf("permanent error retried: %v after %d", err, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Retry(ctx, quiet, "test", fast, func(context.Context) error { return nats.ErrNoResponders }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled retry: %v", err)
	}
}

func TestSuperviseRestartsFailedAttempts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	var prev context.Context
	err := Supervise(ctx, quiet, "test", fast, time.Now, func(actx context.Context) error {
		if prev != nil && prev.Err() == nil {
			t.Error("previous attempt's context not cancelled")
		}
		prev = actx
		if n++; n < 3 {
			return nats.ErrNoResponders
		}
		cancel() // the process is told to stop while running
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("err %v after %d attempts", err, n)
	}
	err = Supervise(context.Background(), quiet, "test", fast, time.Now, func(context.Context) error {
		return fmt.Errorf("bad flag: %w", shared.ErrConfigValidation)
	})
	if !errors.Is(err, shared.ErrConfigValidation) {
		t.Fatalf("permanent error: %v", err)
	}
}

func TestBackoffIsBounded(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for n := range 40 {
		if d := b.Delay(n); d < b.Min || d > b.Max*5/4 {
			t.Fatalf("delay(%d) = %v", n, d)
		}
	}
}
