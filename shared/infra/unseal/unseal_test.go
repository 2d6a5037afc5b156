package unseal

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// One share holder re-labels shares as threshold 2 for a PIN split 3-of-5:
// the keyworker takes k from its configuration, so it never tries a PIN
// combined from two shares (each such try is a failed HSM login towards
// the token's lockout); the three real shares then unseal it, once.
func TestAwaitThresholdFromConfig(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := Open(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	const pin = "1234-secret-pin"
	shares, err := SplitPIN(pin, "p1", 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var tries []string
	done := make(chan error, 1)
	go func() {
		done <- Await(ctx, kv, "p1", 3, slog.New(slog.NewTextHandler(io.Discard, nil)), func(p string) error {
			mu.Lock()
			defer mu.Unlock()
			tries = append(tries, p)
			if p != pin {
				return errors.New("wrong pin")
			}
			return nil
		})
	}()
	for _, s := range shares[:2] {
		s.Threshold = 2
		if err := Submit(ctx, kv, s); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range shares[2:] {
		if err := Submit(ctx, kv, s); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("not unsealed by three real shares")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tries) != 1 || tries[0] != pin {
		t.Fatalf("%d PIN tries (want exactly one, the right PIN)", len(tries))
	}
	if err := Await(ctx, kv, "p1", 1, slog.New(slog.DiscardHandler), nil); !errors.Is(err, shared.ErrConfigValidation) {
		t.Fatalf("threshold 1 accepted: %v", err)
	}
}
