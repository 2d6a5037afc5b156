package authn

import (
	"context"
	"encoding/json"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
)

// Signed work (shared/envelope_sig.go): authn signs the work it queues.
// Per pool, a session key boxed to the pool's pinned box key (verified
// against its pinned signing key) lets each item carry an HMAC instead of
// an Ed25519 signature; a pool without a box key gets Ed25519 per item.

// workSessionContext binds a boxed session key to its session id (the
// keyworker's worksig.go opens it under the same name).
const workSessionContext = "work_session"

// boxWorkKey boxes session keys to a pool's keyworkers.
func (s *Service) boxWorkKey(ctx context.Context) shared.WorkBoxer {
	if s.answers == nil {
		return nil
	}
	return func(pool, session string, key []byte) ([]byte, error) {
		pub, err := s.answers.BoxKey(ctx, pool)
		if err != nil {
			return nil, err
		}
		box, err := kwadmin.SealReply(pub.Bytes(), workSessionContext, session, key)
		if err != nil {
			return nil, err
		}
		return json.Marshal(box)
	}
}
