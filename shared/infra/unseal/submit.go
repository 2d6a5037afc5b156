package unseal

// The custodian's side: find the keys the sealed keyworkers of a pool
// published, pick the ones to trust, and store each share encrypted to
// them. Nothing readable is written: a share leaves the custodian's
// process only as HPKE ciphertext for one keyworker process.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// ErrNoKeyworker: no sealed keyworker of the pool (or none with the pinned
// key) has published its key; nothing was submitted.
var ErrNoKeyworker = errors.New("unseal: no sealed keyworker key to encrypt to")

// PublishedKeys returns the key records of pool's sealed keyworkers, each
// checked (a malformed record or one whose fingerprint does not match its
// key is skipped).
func PublishedKeys(ctx context.Context, kv jetstream.KeyValue, pool string) ([]KeyRecord, error) {
	lister, err := kv.ListKeysFiltered(ctx, shared.UnsealKeysFilter(pool))
	if err != nil {
		return nil, fmt.Errorf("unseal: list keyworker keys: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []KeyRecord
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // the keyworker unsealed or stopped meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("unseal: read keyworker key: %w", err)
		}
		var r KeyRecord
		if json.Unmarshal(e.Value(), &r) != nil || r.Check() != nil || r.Pool != pool || shared.UnsealKeyKey(pool, r.Keyworker) != k {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// Recipients picks the records to encrypt to: those whose fingerprint is
// pinned (case-insensitive), or all when pins is empty. A pin matching no
// published key is an error: the keyworker the custodian checked is not
// the one that would receive the share.
func Recipients(pool string, recs []KeyRecord, pins []string) ([]KeyRecord, error) {
	if len(recs) == 0 {
		return nil, fmt.Errorf("%w: no sealed keyworker of pool %q has published its key (start it: it logs its key fingerprint)", ErrNoKeyworker, pool)
	}
	if len(pins) == 0 {
		return recs, nil
	}
	var out []KeyRecord
	for _, pin := range pins {
		i := slices.IndexFunc(recs, func(r KeyRecord) bool { return strings.EqualFold(r.Fingerprint, strings.TrimSpace(pin)) })
		if i < 0 {
			published := make([]string, len(recs))
			for j, r := range recs {
				published[j] = r.Fingerprint
			}
			return nil, fmt.Errorf("%w: pool %q has no sealed keyworker with key %q (published: %s); nothing submitted",
				ErrNoKeyworker, pool, pin, strings.Join(published, ", "))
		}
		if !slices.ContainsFunc(out, func(r KeyRecord) bool { return r.Keyworker == recs[i].Keyworker }) {
			out = append(out, recs[i])
		}
	}
	return out, nil
}

// Submit encrypts s to the keyworker of rec and stores the ciphertext
// under shared.UnsealShareKey.
func Submit(ctx context.Context, kv jetstream.KeyValue, s Share, rec KeyRecord) error {
	ss, err := Encrypt(rec, s)
	if err != nil {
		return err
	}
	val, err := json.Marshal(ss)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, shared.UnsealShareKey(rec.Pool, rec.Keyworker, ss.Index), val); err != nil {
		return fmt.Errorf("unseal: submit: %w", err)
	}
	return nil
}
