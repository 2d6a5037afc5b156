package keyworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// Signed work (shared/envelope_sig.go): the keyworker acts only on work
// signed by an authn key the bootstrap identity pinned in the roster bucket
// (workkey.<key>), for this pool, fresh, and delivered once. The pins are
// watched: a key added or removed by `sovkeys init` takes effect at once.

// APIWorkRefused is the operator-log API of a refused work item.
const APIWorkRefused shared.API = "keyworker.work.refused"

// watchWorkKeys binds the roster bucket and keeps s.work's keys current
// until ctx ends; it returns once the pins present at start are loaded.
func (s *Service) watchWorkKeys(ctx context.Context) error {
	kv, err := mesh.BindKV(ctx, s.js, jetstream.KeyValueConfig{Bucket: shared.BucketOperators})
	if err != nil {
		return fmt.Errorf("keyworker: roster: %w", err)
	}
	w, err := kv.Watch(ctx, shared.WorkKeyPinPrefix+"*", jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("keyworker: watch work keys: %w", err)
	}
	keys := map[string]bool{}
	apply := func(e jetstream.KeyValueEntry) {
		pub := strings.TrimPrefix(e.Key(), shared.WorkKeyPinPrefix)
		if e.Operation() == jetstream.KeyValuePut {
			keys[pub] = true
		} else {
			delete(keys, pub)
		}
	}
	publish := func() {
		list := make([]string, 0, len(keys))
		for k := range keys {
			list = append(list, k)
		}
		if bad := s.work.SetKeys(list); len(bad) > 0 {
			s.log.Warn("ignoring malformed work key pins", "keys", bad)
		}
	}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		apply(e)
	}
	publish()
	if len(keys) == 0 {
		s.log.Warn("no authn work key is pinned: every work item is refused until `sovkeys init` pins one (docs/operations.md)")
	}
	go func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					apply(e)
					publish()
					s.log.Info("authn work keys changed", "pinned", len(keys))
				}
			}
		}
	}()
	return nil
}

// verifyWork checks m's signature; a refusal is audited in the pool's
// operator log and the message terminated (never redelivered).
// md is m's metadata (nil when it did not parse).
func (s *Service) verifyWork(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, env *shared.Envelope) bool {
	stream, seq := "", uint64(0)
	if md != nil {
		stream, seq = md.Stream, md.Sequence.Stream
	}
	h := m.Headers()
	err := s.work.VerifyUntil(env.ID, m.Data(), h.Get(shared.HeaderWorkSignature), h.Get(shared.HeaderWorkSession), stream, seq, env.Deadline)
	if err == nil {
		return true
	}
	s.refuseWork(ctx, m, env, err)
	return false
}

// refuseWork audits and drops a work item that is not authn's (env may be
// nil when it did not even decode).
func (s *Service) refuseWork(ctx context.Context, m jetstream.Msg, env *shared.Envelope, why error) {
	now := s.now()
	params := map[string]string{"pool": s.cfg.Pool, "subject": m.Subject()}
	id := "unparsed"
	if env != nil {
		id = env.ID
		params["claimed_api"], params["claimed_keystore"] = string(env.API), env.KeyStore
		if env.Authz != nil {
			params["claimed_tenant"], params["claimed_caller"] = env.Authz.Tenant, env.Authz.CallerID
		}
	}
	ev := &shared.AuditEvent{
		RequestID: "work-refused-" + id, Kind: shared.AuditKindOperator, Scope: s.cfg.Pool, API: APIWorkRefused,
		Service: shared.AuditServiceKeyworker, Start: now, End: now, CallerType: "work", CallerID: "unverified",
		Result: shared.ResultDenied, Code: shared.CodeAccessDenied, Reason: strings.TrimPrefix(why.Error(), shared.ErrWorkSignature.Error()+": "),
		Params: params,
	}
	if err := mesh.PublishAudit(ctx, s.js, ev); err != nil {
		s.log.Error("audit of a refused work item failed", "err", err)
		_ = m.Nak() // audited before dropped: try again
		return
	}
	s.refusals.Note(metrics.ReasonWorkSignature, "refused work item", "request_id", id, "subject", m.Subject(), "reason", ev.Reason)
	_ = m.Term()
}

// workSessionContext binds a boxed work session key to its session id.
const workSessionContext = "work_session"

// openWorkSession opens a session key authn boxed to the pool's box key.
func (s *Service) openWorkSession(session string, boxed []byte) ([]byte, error) {
	if s.boxKey == nil {
		return nil, errors.New("no box key")
	}
	var box kwadmin.ReplyBox
	if err := json.Unmarshal(boxed, &box); err != nil {
		return nil, err
	}
	return kwadmin.OpenReply(s.boxKey, workSessionContext, session, &box)
}
