package roster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
)

// Work keys: the public keys of authn's work-signing keys
// (shared/envelope_sig.go), pinned in the roster bucket under
// shared.WorkKeyPin(key) by the bootstrap identity only (the one credential
// that writes this bucket). Keyworkers watch them and refuse work signed by
// any other key.

// PinWorkKeys makes the roster bucket pin exactly the keys pubs: missing
// ones are added, others removed. It returns the keys added and removed.
func PinWorkKeys(ctx context.Context, kv jetstream.KeyValue, pubs []string) (added, removed []string, err error) {
	for _, p := range pubs {
		if !nkeys.IsValidPublicServerKey(p) {
			return nil, nil, fmt.Errorf("%w: %q is not a work key (a server nkey, N...)", shared.ErrConfigValidation, p)
		}
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var have []string
	if lister != nil {
		for k := range lister.Keys() {
			if pub, ok := strings.CutPrefix(k, shared.WorkKeyPinPrefix); ok {
				have = append(have, pub)
			}
		}
	}
	for _, p := range pubs {
		if slices.Contains(have, p) {
			continue
		}
		if _, err := kv.Put(ctx, shared.WorkKeyPin(p), []byte(`{"service":"authn"}`)); err != nil {
			return added, removed, fmt.Errorf("%w: pin work key: %v", ErrRoster, err)
		}
		added = append(added, p)
	}
	for _, p := range have {
		if slices.Contains(pubs, p) {
			continue
		}
		if err := kv.Delete(ctx, shared.WorkKeyPin(p)); err != nil {
			return added, removed, fmt.Errorf("%w: unpin work key: %v", ErrRoster, err)
		}
		removed = append(removed, p)
	}
	return added, removed, nil
}
