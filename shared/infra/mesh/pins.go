package mesh

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// PinsBucketConfig is KV sovkeys_pins: public keys pinned write-once
// (Bootstrap hardens it with HardenWriteOnce: one value per key forever).
func PinsBucketConfig(t Topology) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: shared.BucketPins, Description: "sovkeys: public keys pinned write-once (pool signing keys)",
		History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas,
	}
}

// ErrPinMismatch is returned by Pin when key already holds another value.
var ErrPinMismatch = errors.New("pinned value differs")

// Pin creates key with value in the write-once pins bucket, or checks that
// it already holds exactly value (ErrPinMismatch otherwise).
func Pin(ctx context.Context, kv jetstream.KeyValue, key string, value []byte) error {
	_, err := kv.Create(ctx, key, value)
	if err == nil {
		return nil
	}
	// A present key: the KV create's "wrong last sequence", or the
	// hardened stream's refusal of a second message on the subject.
	e, gerr := kv.Get(ctx, key)
	if gerr != nil {
		return fmt.Errorf("pin %s: %w (read: %v)", key, err, gerr)
	}
	if string(e.Value()) != string(value) {
		return fmt.Errorf("pin %s: %w", key, ErrPinMismatch)
	}
	return nil
}

// BindPins binds the pins bucket (declared by Bootstrap).
func BindPins(ctx context.Context, js jetstream.JetStream, t Topology) (jetstream.KeyValue, error) {
	return BindKV(ctx, js, PinsBucketConfig(t))
}
