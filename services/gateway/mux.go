package gateway

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
)

// replyMux routes the answers for this gateway, all arriving on ONE
// long-lived subscription, to the waiting HTTP handlers by request id.
type replyMux struct {
	mu      sync.Mutex
	pending map[string]chan *nats.Msg
}

func newReplyMux() *replyMux { return &replyMux{pending: map[string]chan *nats.Msg{}} }

// register must be called before the request is published.
func (r *replyMux) register(id string) chan *nats.Msg {
	ch := make(chan *nats.Msg, 1)
	r.mu.Lock()
	r.pending[id] = ch
	r.mu.Unlock()
	return ch
}

func (r *replyMux) cancel(id string) {
	r.mu.Lock()
	delete(r.pending, id)
	r.mu.Unlock()
}

// deliver is the subscription handler.
func (r *replyMux) deliver(m *nats.Msg) {
	id := m.Header.Get(shared.HeaderRequestID)
	r.mu.Lock()
	ch, ok := r.pending[id]
	delete(r.pending, id)
	r.mu.Unlock()
	if ok {
		ch <- m // buffered: never blocks
	}
}

// wait blocks for the reply of id until ctx ends.
func (r *replyMux) wait(ctx context.Context, id string, ch chan *nats.Msg) (*nats.Msg, error) {
	select {
	case m := <-ch:
		return m, nil
	case <-ctx.Done():
		r.cancel(id)
		return nil, ctx.Err()
	}
}
