package writeonce

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Lister is implemented by stores that can enumerate the names they hold.
// It is optional: Store does not require it.
type Lister interface {
	// List calls fn with every stored name that starts with prefix, in
	// ascending byte order, until fn returns an error (which List returns).
	List(ctx context.Context, prefix string, fn func(name string) error) error
}

var (
	_ Lister = (*S3Store)(nil)
	_ Lister = (*JetStreamStore)(nil)
)

// s3ListAPI is the listing part of the S3 client; *s3.Client has it.
type s3ListAPI interface {
	ListObjectsV2(ctx context.Context, in *s3.ListObjectsV2Input, optFns ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
}

var _ s3ListAPI = (*s3.Client)(nil)

// List lists the names directly under this store's prefix (keys in deeper
// "directories", such as write-once probes or another store's Sub, are not
// names of this store). S3 returns keys in ascending UTF-8 byte order.
func (s *S3Store) List(ctx context.Context, prefix string, fn func(name string) error) error {
	api, ok := s.api.(s3ListAPI)
	if !ok {
		return errors.New("ektstore: s3 client cannot list objects")
	}
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket), Prefix: aws.String(s.prefix + prefix), Delimiter: aws.String("/"),
	}
	for {
		out, err := api.ListObjectsV2(ctx, in)
		if err != nil {
			return fmt.Errorf("ektstore: s3 list %s%s: %w", s.prefix, prefix, err)
		}
		for _, o := range out.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), s.prefix)
			if !ValidName(name) {
				continue
			}
			if err := fn(name); err != nil {
				return err
			}
		}
		if !aws.ToBool(out.IsTruncated) || out.NextContinuationToken == nil {
			return nil
		}
		in.ContinuationToken = out.NextContinuationToken
	}
}

// List lists the committed names (the index bucket's keys).
func (s *JetStreamStore) List(ctx context.Context, prefix string, fn func(name string) error) error {
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("ektstore: index list: %w", err)
	}
	var names []string
	for k := range keys.Keys() {
		name := strings.ReplaceAll(k, "=2e", ".")
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	_ = keys.Stop()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ektstore: index list: %w", err)
	}
	slices.Sort(names)
	names = slices.Compact(names) // a listing may repeat a key
	for _, n := range names {
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}
