package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// LeaderMove is one leader SpreadLeaders placed (or found in place).
type LeaderMove struct {
	Stream   string `json:"stream"`
	Consumer string `json:"consumer,omitempty"`
	From     string `json:"from"`
	To       string `json:"to"`
}

// SpreadLeaders puts the leaders of sibling streams on different nodes, so
// that the loss of one node leaves every request a sibling to fail over to
// (siblings.go). Sibling i of the request streams is led by node i of the
// sorted node names, of the work streams by node i+1, of the audit streams
// by node i+2: one node's loss then costs a request at most one failover.
// Each stream's consumers are led by its stream's node too (a consumer
// whose leader is gone delivers nothing until a new one is elected).
// Streams or consumers that do not exist yet are skipped; run it again
// (`sovkeys init` does) after nodes return or services first start.
// With one replica there is nothing to spread.
func SpreadLeaders(ctx context.Context, js jetstream.JetStream, topo Topology, pools []string) ([]LeaderMove, error) {
	n := max(topo.Siblings, 1)
	if topo.Replicas < 2 || n < 2 {
		return nil, nil
	}
	type group struct {
		base      string
		offset    int
		consumers []string
	}
	groups := []group{{shared.StreamRequests, 0, []string{shared.ConsumerAuthn}}, {shared.StreamAudit, 2, []string{shared.ConsumerAudit}}}
	for _, p := range pools {
		groups = append(groups, group{shared.WorkStream(p), 1, []string{shared.WorkConsumer(p)}})
	}
	var moves []LeaderMove
	var errs []error
	for _, g := range groups {
		for i := range n {
			name := shared.SiblingStream(g.base, i)
			s, err := js.Stream(ctx, name)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
				continue
			}
			info := s.CachedInfo()
			nodes := clusterNodes(info.Cluster)
			if len(nodes) < 2 {
				continue
			}
			target := nodes[(i+g.offset)%len(nodes)]
			mv := LeaderMove{Stream: name, From: info.Cluster.Leader, To: target}
			if info.Cluster.Leader != target {
				if err := stepDown(ctx, js, shared.JSStreamLeaderStepdown+name, target); err != nil {
					errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
					continue
				}
			}
			moves = append(moves, mv)
			for _, c := range g.consumers {
				ci, err := js.Consumer(ctx, name, c)
				if errors.Is(err, jetstream.ErrConsumerNotFound) {
					continue
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("consumer %s/%s: %w", name, c, err))
					continue
				}
				cinfo := ci.CachedInfo()
				from := ""
				if cinfo.Cluster != nil {
					from = cinfo.Cluster.Leader
				}
				if from != target {
					if err := stepDown(ctx, js, shared.JSConsumerLeaderStepdown+name+"."+c, target); err != nil {
						errs = append(errs, fmt.Errorf("consumer %s/%s: %w", name, c, err))
						continue
					}
				}
				moves = append(moves, LeaderMove{Stream: name, Consumer: c, From: from, To: target})
			}
		}
	}
	return moves, errors.Join(errs...)
}

// clusterNodes is the sorted names of a stream's leader and replicas.
func clusterNodes(ci *jetstream.ClusterInfo) []string {
	if ci == nil || ci.Leader == "" {
		return nil
	}
	nodes := []string{ci.Leader}
	for _, r := range ci.Replicas {
		if r.Current && !r.Offline { // a lagging or lost peer cannot lead now
			nodes = append(nodes, r.Name)
		}
	}
	slices.Sort(nodes)
	return slices.Compact(nodes)
}

// stepDown asks the leader behind subject to hand over to node.
func stepDown(ctx context.Context, js jetstream.JetStream, subject, node string) error {
	body, err := json.Marshal(map[string]any{"placement": map[string]string{"preferred": node}})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := js.Conn().RequestWithContext(rctx, subject, body)
	if err != nil {
		return err
	}
	var r struct {
		Success bool `json:"success"`
		Error   *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return fmt.Errorf("stepdown reply: %w", err)
	}
	if r.Error != nil {
		return fmt.Errorf("stepdown to %s: %s (%d)", node, r.Error.Description, r.Error.Code)
	}
	return nil
}
