package audit

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Checkpoints
//
// The tlog exporter asks the keyworker pool SignPool to sign the checkpoint
// of each scope's tree once its tiles are in the bucket, with a consistency
// proof from the last checkpoint the pool signed for that scope. The pool
// keeps that state in KV (shared.BucketAuditSigner, read-only to this
// service) and refuses a tree that does not extend it, so even this
// service cannot get a forked or rolled-back log signed. Records are never
// signed one by one: SoftHSM signs about 1,000 P-384 signatures/s per core.

const (
	signConcurrency   = 8
	checkpointTimeout = 15 * time.Second
)

// errNoRecords: a checkpoint of a scope without records was asked for.
var errNoRecords = errors.New("audit: the log has no records yet")

// errSignerAhead: the pool signed a larger tree than this process holds
// (another process got further); reload from the signer's state.
var errSignerAhead = errors.New("audit: the signer is ahead of this process's tree")

type signer struct {
	s      *Service
	budget *rate.Limiter // budget.go

	keyMu sync.Mutex
	spki  []byte
	pub   *ecdsa.PublicKey
}

// signerState reads the pool's last signed checkpoint of sc (zero if none).
func (g *signer) state(ctx context.Context, sc auditlog.Scope) (auditlog.SignerState, error) {
	var st auditlog.SignerState
	kv, err := g.s.js.KeyValue(ctx, shared.BucketAuditSigner)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("audit: signer state: %w", err)
	}
	e, err := kv.Get(ctx, auditlog.SignerStateKey(g.s.cfg.SignPool, sc))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("audit: signer state of %s: %w", sc, err)
	}
	if err := json.Unmarshal(e.Value(), &st); err != nil || len(st.Root) != tlog.HashSize {
		return st, fmt.Errorf("audit: signer state of %s is unreadable", sc)
	}
	if want := sc.Origin(g.s.cfg.Deployment); st.Origin != want {
		return st, fmt.Errorf("audit: %s is signed under origin %q, not %q (deployment renamed?)", sc, st.Origin, want)
	}
	return st, nil
}

// sign has the pool sign the tree of b, proving consistency from the
// pool's last signed size oldSize. It returns the signed checkpoint, or
// errSignerAhead with the pool's size.
func (g *signer) sign(ctx context.Context, sc auditlog.Scope, b *auditlog.Builder, bucket auditlog.Bucket, oldSize int64) ([]byte, int64, error) {
	size := b.Size()
	root, err := b.Root()
	if err != nil {
		return nil, oldSize, err
	}
	_, pub, err := g.key(ctx)
	if err != nil {
		return nil, oldSize, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		if oldSize > size {
			return nil, oldSize, errSignerAhead
		}
		var proof [][]byte
		if oldSize > 0 && oldSize < size {
			hr, err := b.HashReader(ctx, bucket, sc)
			if err != nil {
				return nil, oldSize, err
			}
			p, err := tlog.ProveTree(size, oldSize, hr)
			if err != nil {
				return nil, oldSize, fmt.Errorf("audit: consistency proof %d -> %d: %w", oldSize, size, err)
			}
			for _, h := range p {
				proof = append(proof, h[:])
			}
		}
		req := auditlog.SignRequest{Tlog: &auditlog.TlogSignRequest{
			Deployment: g.s.cfg.Deployment, Kind: sc.Kind, Scope: sc.ID,
			OldSize: oldSize, Proof: proof, Size: size, Root: root[:],
		}}
		if err := g.spendSign(ctx); err != nil {
			return nil, oldSize, err
		}
		var resp auditlog.TlogSignResponse
		if err := kwadmin.Call(ctx, g.s.nc, g.s.cfg.SignPool, auditlog.EndpointSign, req, &resp); err != nil {
			return nil, oldSize, fmt.Errorf("audit: sign checkpoint: %w", err)
		}
		if resp.Conflict {
			oldSize = resp.SignedSize
			continue
		}
		th, _, err := auditlog.Trust{Deployment: g.s.cfg.Deployment, LogKey: pub}.OpenCheckpoint(resp.Checkpoint, sc)
		if err != nil {
			return nil, oldSize, fmt.Errorf("audit: hsm checkpoint: %w", err)
		}
		if th.Size != size || th.Root != root {
			return nil, oldSize, fmt.Errorf("audit: hsm checkpoint names size %d, not %d", th.Size, size)
		}
		return resp.Checkpoint, size, nil
	}
	return nil, oldSize, fmt.Errorf("audit: sign checkpoint of %s: the signed size keeps moving", sc)
}

// key returns the pool's audit public key as published in KV, asking the
// pool to create and publish it when it is not there yet.
func (g *signer) key(ctx context.Context) ([]byte, *ecdsa.PublicKey, error) {
	g.keyMu.Lock()
	defer g.keyMu.Unlock()
	if g.pub != nil {
		return g.spki, g.pub, nil
	}
	kv, err := mesh.EnsureBucket(ctx, g.s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", g.s.cfg.Topology)
	if err != nil {
		return nil, nil, err
	}
	var spki []byte
	e, err := kv.Get(ctx, auditlog.PKIKey(g.s.cfg.SignPool))
	switch {
	case err == nil:
		spki = e.Value()
	case errors.Is(err, jetstream.ErrKeyNotFound):
		var resp auditlog.PublicKeyResponse
		if err := kwadmin.Call(ctx, g.s.nc, g.s.cfg.SignPool, auditlog.EndpointPublicKey, struct{}{}, &resp); err != nil {
			return nil, nil, fmt.Errorf("audit: audit public key of pool %q: %w", g.s.cfg.SignPool, err)
		}
		spki = resp.PublicKey
	default:
		return nil, nil, fmt.Errorf("audit: read audit public key: %w", err)
	}
	pub, err := auditlog.ParsePublicKey(spki)
	if err != nil {
		return nil, nil, err
	}
	g.spki, g.pub = spki, pub
	g.s.log.Info("audit signing key", "pool", g.s.cfg.SignPool, "key_sha256", auditlog.KeyID(spki))
	return spki, pub, nil
}

// published returns the checkpoint of st as the exporter stored it in the
// central bucket, witness cosignatures included, or the signer's own note
// when the exporter has not written it yet (it cosigns after signing).
func (g *signer) published(ctx context.Context, sc auditlog.Scope, st auditlog.SignerState) []byte {
	if g.s.tlog == nil || g.s.tlog.central == nil {
		return st.Checkpoint
	}
	wait, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if cp, err := g.s.tlog.central.Get(wait, sc.CheckpointHistoryKey(st.Size)); err == nil {
			return cp
		}
		select {
		case <-wait.Done():
			return st.Checkpoint
		case <-t.C:
		}
	}
}

// checkpoint returns a signed checkpoint covering the scope's head as it
// is now, waiting for the exporter to get there.
func (g *signer) checkpoint(ctx context.Context, sc auditlog.Scope) ([]byte, error) {
	h, err := loadHead(ctx, g.s.logStream, sc)
	if err != nil {
		return nil, err
	}
	if h.seq == 0 {
		return nil, errNoRecords
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := g.state(ctx, sc)
		if err != nil {
			return nil, err
		}
		if uint64(st.Size) >= h.seq {
			return g.published(ctx, sc, st), nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("audit: no checkpoint covers record %d of %s yet: %w", h.seq, sc, ctx.Err())
		case <-t.C:
		}
	}
}
