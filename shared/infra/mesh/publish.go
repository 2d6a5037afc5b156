package mesh

// Publishing on the request path through a short loss of a stream's leader
// or a NATS node: retry within the caller's deadline instead of failing at
// the first "no responders". Every retry carries the same Nats-Msg-Id, so a
// publish that did land before its ack was lost is dropped by the stream's
// de-duplication: retrying never executes an operation twice.

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishTry bounds one publish attempt on the request path.
const PublishTry = 150 * time.Millisecond

// publishPause is the wait between attempts.
const publishPause = 20 * time.Millisecond

// PublishWithin publishes msg to JetStream, retrying a transient failure
// (no responders while a leader is elected, an attempt timing out, the
// connection reconnecting) while ctx's deadline leaves room; each attempt
// lasts at most perTry. Other errors (a full queue, a refused message)
// return at once; without a deadline or a Nats-Msg-Id there is one attempt.
func PublishWithin(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, perTry time.Duration) (*jetstream.PubAck, error) {
	if _, ok := ctx.Deadline(); !ok || msg.Header.Get(jetstream.MsgIDHeader) == "" {
		// Retries need a deadline to end, and a de-duplication id so that
		// a retry never enqueues twice.
		return js.PublishMsg(ctx, msg)
	}
	for {
		tctx, cancel := context.WithTimeout(ctx, perTry)
		ack, err := js.PublishMsg(tctx, msg)
		cancel()
		if err == nil || !transientPublish(err) || ctx.Err() != nil {
			return ack, err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < publishPause+perTry/4 {
			return nil, err
		}
		if sleep(ctx, publishPause) != nil {
			return nil, err
		}
	}
}

// transientPublish reports the publish failures a retry may cure.
func transientPublish(err error) bool {
	if IsQueueFull(err) {
		return false // answered at once: ThrottlingException
	}
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrConnectionDraining)
}
