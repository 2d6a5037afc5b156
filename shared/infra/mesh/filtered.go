package mesh

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// CreateFilteredConsumers is CreateConsumers with a subject filter per
// sibling stream (filter(i) for sibling i): a consumer never takes a
// message outside the subjects its service serves, whatever else the
// stream captures.
func CreateFilteredConsumers(ctx context.Context, streams []jetstream.Stream, filter func(i int) string, cfg jetstream.ConsumerConfig) ([]jetstream.Consumer, error) {
	out := make([]jetstream.Consumer, 0, len(streams))
	for i, s := range streams {
		c := cfg
		c.FilterSubject = filter(i)
		cs, err := CreateConsumers(ctx, []jetstream.Stream{s}, c)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}
