package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Checkpoints
//
// Every CheckpointEvery (1 s) the checkpointer signs the head of each scope
// this process committed to since the last round, if no checkpoint covers
// it yet: the keyworker pool SignPool signs SHA-256(canonical checkpoint
// without "sig") with the HSM key sovkeys-audit-v1. The checkpoint goes to
// the scope's checkpoint subject with expected-last-subject-sequence, so
// concurrent audit processes never store two checkpoints of one round.
// At start and every minute it also sweeps every scope in the stream, so a
// tail left unsigned by a process that died is signed by another one.

const (
	sweepEvery        = time.Minute
	signConcurrency   = 8
	checkpointTimeout = 15 * time.Second
)

type checkpointer struct {
	s      *Service
	budget *rate.Limiter // budget.go

	mu    sync.Mutex
	dirty map[auditlog.Scope]bool

	keyMu sync.Mutex
	spki  []byte // the audit public key everything must be signed with
	pub   *ecdsa.PublicKey
}

func newCheckpointer(s *Service) *checkpointer {
	return &checkpointer{s: s, dirty: make(map[auditlog.Scope]bool), budget: newSignBudget(s.cfg.SignsPerSecond)}
}

// mark records that the scope's head moved.
func (c *checkpointer) mark(sc auditlog.Scope) {
	c.mu.Lock()
	c.dirty[sc] = true
	c.mu.Unlock()
}

func (c *checkpointer) run(ctx context.Context) {
	defer c.s.wg.Done()
	tick := time.NewTicker(c.s.cfg.CheckpointEvery)
	defer tick.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	c.sweep(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			c.sweep(ctx)
		case <-tick.C:
			c.round(ctx)
		}
	}
}

// sweep makes sure the audit key exists and is published (so the gateway
// serves it before the first checkpoint) and marks every scope that has
// records.
func (c *checkpointer) sweep(ctx context.Context) {
	kctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	if _, _, err := c.key(kctx); err != nil {
		c.s.log.Debug("audit key not available yet", "pool", c.s.cfg.SignPool, "err", err)
	}
	cancel()
	info, err := c.s.logStream.Info(ctx, jetstream.WithSubjectFilter(auditlog.SubjectRecordPrefix+">"))
	if err != nil {
		c.s.log.Warn("checkpoint sweep: stream info", "err", err)
		return
	}
	for subj := range info.State.Subjects {
		if sc, _, err := auditlog.ScopeOfSubject(subj); err == nil {
			c.mark(sc)
		}
	}
}

// round checkpoints every dirty scope.
func (c *checkpointer) round(ctx context.Context) {
	c.mu.Lock()
	scopes := make([]auditlog.Scope, 0, len(c.dirty))
	for sc := range c.dirty {
		scopes = append(scopes, sc)
	}
	clear(c.dirty)
	c.mu.Unlock()
	sem := make(chan struct{}, signConcurrency)
	var wg sync.WaitGroup
	for _, sc := range scopes {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
			defer cancel()
			if _, err := c.checkpoint(cctx, sc); err != nil && !errors.Is(err, errNoRecords) && ctx.Err() == nil {
				c.mark(sc) // try again next round
				c.s.count(func(st *Stats) {
					st.CheckpointErrors++
					st.LastCheckpointError = err.Error()
				})
				c.s.log.Warn("checkpoint failed", "scope", sc.String(), "err", err)
			}
		}()
	}
	wg.Wait()
}

// errNoRecords: a checkpoint of a scope without records was asked for.
var errNoRecords = errors.New("audit: the log has no records yet")

// checkpoint makes sure a signed checkpoint covers the scope's current head
// and returns the newest checkpoint (canonical bytes).
func (c *checkpointer) checkpoint(ctx context.Context, sc auditlog.Scope) ([]byte, error) {
	h, err := loadHead(ctx, c.s.logStream, sc)
	if err != nil {
		return nil, err
	}
	if h.seq == 0 {
		return nil, errNoRecords
	}
	lastSeq, lastStreamSeq, lastData, err := c.lastCheckpoint(ctx, sc)
	if err != nil {
		return nil, err
	}
	if lastSeq >= h.seq {
		return lastData, nil
	}
	spki, pub, err := c.key(ctx)
	if err != nil {
		return nil, err
	}
	cp := auditlog.NewCheckpoint(sc, h.seq, h.hash, c.s.now(), spki)
	msg, err := cp.SignedBytes()
	if err != nil {
		return nil, err
	}
	if err := c.spendSign(ctx); err != nil { // budget.go
		return nil, err
	}
	var resp auditlog.SignResponse
	if err := kwadmin.Call(ctx, c.s.nc, c.s.cfg.SignPool, auditlog.EndpointSign, auditlog.SignRequest{Message: msg}, &resp); err != nil {
		return nil, fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	if !bytes.Equal(resp.PublicKey, spki) {
		return nil, fmt.Errorf("audit: pool %q signed with key %s, not the published audit key %s",
			c.s.cfg.SignPool, auditlog.KeyID(resp.PublicKey), auditlog.KeyID(spki))
	}
	cp.SetSignature(resp.Signature)
	if err := cp.Verify(pub); err != nil {
		return nil, fmt.Errorf("audit: hsm checkpoint signature: %w", err)
	}
	data, err := cp.Encode()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	m := nats.NewMsg(sc.CheckpointSubject())
	m.Data = data
	_, err = c.s.js.PublishMsg(ctx, m,
		jetstream.WithExpectLastSequencePerSubject(lastStreamSeq), jetstream.WithMsgID(hex.EncodeToString(sum[:])))
	if isConflict(err) {
		// Another process checkpointed meanwhile; report the newest one.
		_, _, newest, lerr := c.lastCheckpoint(ctx, sc)
		return newest, lerr
	}
	if err != nil {
		return nil, fmt.Errorf("audit: publish checkpoint: %w", err)
	}
	c.s.count(func(st *Stats) { st.Checkpoints++ })
	return data, nil
}

// lastCheckpoint returns the sequence, stream sequence and bytes of the
// scope's newest checkpoint (zeros when there is none).
func (c *checkpointer) lastCheckpoint(ctx context.Context, sc auditlog.Scope) (uint64, uint64, []byte, error) {
	m, err := c.s.logStream.GetLastMsgForSubject(ctx, sc.CheckpointSubject())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil, nil
	}
	if err != nil {
		return 0, 0, nil, fmt.Errorf("audit: last checkpoint of %s: %w", sc, err)
	}
	cp, err := auditlog.ParseCheckpoint(m.Data)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("audit: last checkpoint of %s: %w", sc, err)
	}
	return cp.Seq, m.Sequence, m.Data, nil
}

// key returns the pool's audit public key as published in KV, asking the
// pool to create and publish it when it is not there yet.
func (c *checkpointer) key(ctx context.Context) ([]byte, *ecdsa.PublicKey, error) {
	c.keyMu.Lock()
	defer c.keyMu.Unlock()
	if c.pub != nil {
		return c.spki, c.pub, nil
	}
	kv, err := mesh.EnsureBucket(ctx, c.s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", c.s.cfg.Topology)
	if err != nil {
		return nil, nil, err
	}
	var spki []byte
	e, err := kv.Get(ctx, auditlog.PKIKey(c.s.cfg.SignPool))
	switch {
	case err == nil:
		spki = e.Value()
	case errors.Is(err, jetstream.ErrKeyNotFound):
		var resp auditlog.PublicKeyResponse
		if err := kwadmin.Call(ctx, c.s.nc, c.s.cfg.SignPool, auditlog.EndpointPublicKey, struct{}{}, &resp); err != nil {
			return nil, nil, fmt.Errorf("audit: audit public key of pool %q: %w", c.s.cfg.SignPool, err)
		}
		spki = resp.PublicKey
	default:
		return nil, nil, fmt.Errorf("audit: read audit public key: %w", err)
	}
	pub, err := auditlog.ParsePublicKey(spki)
	if err != nil {
		return nil, nil, err
	}
	c.spki, c.pub = spki, pub
	c.s.log.Info("audit signing key", "pool", c.s.cfg.SignPool, "key_sha256", auditlog.KeyID(spki))
	return spki, pub, nil
}
