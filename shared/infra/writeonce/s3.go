package writeonce

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/sovkeys/sovkeys/shared"
)

// Write-once on S3
//
// Create is one PutObject with If-None-Match: "*". The server evaluates the
// condition atomically with the write: 412 PreconditionFailed means the key
// exists (ErrExists). 409 ConditionalRequestConflict means a concurrent
// conditional write to the same key is in flight; AWS documents it as
// retryable, so Create retries it and the retry normally answers 412.
//
// Evidence for versitygw v1.8.0 (the test server), 2026-11-23: its posix
// backend checks If-None-Match once before staging the body and again,
// authoritatively, under a per-object publish lock (lockObjectPublish in
// backend/posix), and answers 412 PreconditionFailed (upstream issue #1708,
// "If-None-Match ignored", fixed by PR #1727 before v1.8.0). The tests prove
// it: 16 concurrent creators, exactly one 200. Amazon S3 has enforced it
// since August 2024.
//
// A server that ignores the header would make every Create "win" and
// silently overwrite EKTs. So before its first write an S3Store proves the
// server enforces it (Check: put a random probe key twice; the second put
// must fail with 412/409) and refuses to write (ErrNotWriteOnce) otherwise.
// versitygw itself ignores the condition when started with --nometa (it then
// has no ETag to test for existence); the probe catches that. We do not fall
// back to "versioning, oldest version wins": it relies on ListObjectVersions
// ordering that such servers implement no more reliably, and complicates
// every read. Enable versioning (and object lock) on the bucket anyway, as a
// second line of defence: an overwrite by anything else stays recoverable.
//
// Every object carries its SHA-256 (x-amz-meta-sha256, and the request's
// x-amz-checksum-sha256 so the server rejects a corrupted upload); Get
// verifies it and returns ErrCorrupt on mismatch.

const (
	metaSHA256 = "sha256" // user metadata key: hex SHA-256 of the blob
	// probePrefix names probe keys; "/" never occurs in a valid name, so a
	// probe key can never collide with a blob.
	probePrefix = "_sovkeys-probe/"
	// conflictRetries bounds retries of 409 ConditionalRequestConflict.
	conflictRetries = 5
	conflictBackoff = 50 * time.Millisecond
)

// S3Config says where the S3 store lives.
type S3Config struct {
	Endpoint        string // base URL (http[s]://host[:port]); empty: AWS S3 for Region
	Region          string
	Bucket          string
	Prefix          string // key prefix: empty or ending in "/", e.g. "ekt/"
	AccessKeyID     string // with SecretAccessKey; both empty: the SDK's default chain
	SecretAccessKey string
	UsePathStyle    bool // path-style addressing (versitygw, MinIO)
}

// Validate checks the configuration.
func (c S3Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: ektstore s3: %s", shared.ErrConfigValidation, fmt.Sprintf(format, args...))
	}
	if c.Region == "" {
		return bad("region is required")
	}
	if !validBucket(c.Bucket) {
		return bad("bucket %q: want 3..63 characters of [a-z0-9.-], starting and ending with a letter or digit", c.Bucket)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("endpoint %q: want http[s]://host[:port]", c.Endpoint)
		}
	}
	if !validPrefix(c.Prefix) {
		return bad("prefix %q: want empty or path segments of [A-Za-z0-9-_.] ending in \"/\"", c.Prefix)
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		return bad("access key id and secret access key go together")
	}
	return nil
}

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		alnum := 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
		if !alnum && c != '-' && c != '.' {
			return false
		}
		if (i == 0 || i == len(b)-1) && !alnum {
			return false
		}
	}
	return true
}

func validPrefix(p string) bool {
	if p == "" {
		return true
	}
	if !strings.HasSuffix(p, "/") {
		return false
	}
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				return false
			}
		}
	}
	return true
}

// s3API is the part of the S3 client the store uses.
type s3API interface {
	PutObject(ctx context.Context, in *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	GetObject(ctx context.Context, in *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	DeleteObject(ctx context.Context, in *s3.DeleteObjectInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
}

var _ s3API = (*s3.Client)(nil)

// S3Store is the S3 backend.
type S3Store struct {
	api    s3API
	bucket string
	prefix string

	mu     sync.Mutex // serialises the write-once probe
	proven bool       // the server enforces If-None-Match
}

var _ Store = (*S3Store)(nil)

// NewS3 builds the S3 client. It does no I/O beyond loading the SDK's
// default credential chain when no static key is configured; the first
// Create (or an explicit Check) proves the server enforces write-once.
func NewS3(ctx context.Context, cfg S3Config) (*S3Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var opts []func(*config.LoadOptions) error
	opts = append(opts, config.WithRegion(cfg.Region))
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("ektstore: s3 config: %w", err)
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.UsePathStyle
	})
	return &S3Store{api: client, bucket: cfg.Bucket, prefix: cfg.Prefix}, nil
}

// Backend returns "s3".
func (s *S3Store) Backend() string { return BackendS3 }

func (s *S3Store) key(name string) string { return s.prefix + name }

// Create stores data under name unless the name exists (ErrExists).
func (s *S3Store) Create(ctx context.Context, name string, data []byte) error {
	if err := checkInput(name, data); err != nil {
		return err
	}
	if err := s.Check(ctx); err != nil {
		return err
	}
	return s.putIfAbsent(ctx, s.key(name), data)
}

// Check proves, once per store, that the bucket is writable and the server
// enforces If-None-Match: it creates a random probe key, creates it again
// (which must fail), then deletes it (best effort; with versioning a delete
// marker and the tiny probe version remain). It returns ErrNotWriteOnce for
// a server that ignores the condition. Create calls it; call it at startup
// to fail fast.
func (s *S3Store) Check(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proven {
		return nil
	}
	key := s.prefix + probePrefix + strings.ToLower(rand.Text())
	data := []byte("sovkeys write-once probe\n")
	if err := s.putIfAbsent(ctx, key, data); err != nil {
		if errors.Is(err, ErrExists) {
			// A fresh random key cannot exist: the server answers 412 to
			// everything, which is no proof either.
			return fmt.Errorf("%w: s3 bucket %s: first conditional put of a new probe key failed", ErrNotWriteOnce, s.bucket)
		}
		return fmt.Errorf("ektstore: s3 write-once probe: %w", err)
	}
	defer func() {
		_, _ = s.api.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	}()
	err := s.putIfAbsent(ctx, key, data)
	switch {
	case err == nil:
		return fmt.Errorf("%w: s3 bucket %s: the server accepted If-None-Match \"*\" over an existing key", ErrNotWriteOnce, s.bucket)
	case !errors.Is(err, ErrExists):
		return fmt.Errorf("ektstore: s3 write-once probe: %w", err)
	}
	s.proven = true
	return nil
}

// putIfAbsent is one conditional create, retrying 409 conflicts.
func (s *S3Store) putIfAbsent(ctx context.Context, key string, data []byte) error {
	sum := sha256.Sum256(data)
	for attempt := 0; ; attempt++ {
		_, err := s.api.PutObject(ctx, &s3.PutObjectInput{
			Bucket:         aws.String(s.bucket),
			Key:            aws.String(key),
			Body:           bytes.NewReader(data),
			ContentLength:  aws.Int64(int64(len(data))),
			ContentType:    aws.String("application/octet-stream"),
			IfNoneMatch:    aws.String("*"),
			ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(sum[:])),
			Metadata:       map[string]string{metaSHA256: hex.EncodeToString(sum[:])},
		})
		switch putOutcome(err) {
		case outcomeOK:
			return nil
		case outcomeExists:
			return fmt.Errorf("%w: s3 key %s", ErrExists, key)
		case outcomeConflict:
			if attempt >= conflictRetries {
				return fmt.Errorf("ektstore: s3 put %s: conditional request conflict persisted after %d retries: %w", key, attempt, err)
			}
			t := time.NewTimer(conflictBackoff << attempt)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("ektstore: s3 put %s: %w", key, ctx.Err())
			case <-t.C:
			}
		case outcomeNotImplemented:
			return fmt.Errorf("%w: s3 put %s: server does not implement If-None-Match: %w", ErrNotWriteOnce, key, err)
		default:
			return fmt.Errorf("ektstore: s3 put %s: %w", key, err)
		}
	}
}

type outcome int

const (
	outcomeOK outcome = iota
	outcomeExists
	outcomeConflict
	outcomeNotImplemented
	outcomeError
)

// putOutcome classifies a conditional PutObject result by S3 error code,
// falling back to the HTTP status.
func putOutcome(err error) outcome {
	if err == nil {
		return outcomeOK
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "PreconditionFailed":
			return outcomeExists
		case "ConditionalRequestConflict":
			return outcomeConflict
		case "NotImplemented":
			return outcomeNotImplemented
		}
	}
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) {
		switch respErr.HTTPStatusCode() {
		case http.StatusPreconditionFailed:
			return outcomeExists
		case http.StatusNotImplemented:
			return outcomeNotImplemented
		}
	}
	return outcomeError
}

// Get returns the blob stored under name, verified against its recorded
// SHA-256.
func (s *S3Store) Get(ctx context.Context, name string) ([]byte, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w: name %q", ErrInvalid, name)
	}
	key := s.key(name)
	out, err := s.api.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		var noKey *types.NoSuchKey
		var respErr *smithyhttp.ResponseError
		if errors.As(err, &noKey) || errors.As(err, &respErr) && respErr.HTTPStatusCode() == http.StatusNotFound {
			return nil, fmt.Errorf("%w: s3 key %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("ektstore: s3 get %s: %w", key, err)
	}
	defer out.Body.Close()
	data, err := io.ReadAll(io.LimitReader(out.Body, MaxDataSize+1))
	if err != nil {
		return nil, fmt.Errorf("ektstore: s3 get %s: read body: %w", key, err)
	}
	if len(data) > MaxDataSize {
		return nil, fmt.Errorf("%w: s3 key %s is larger than %d bytes", ErrCorrupt, key, MaxDataSize)
	}
	sum := sha256.Sum256(data)
	if want := out.Metadata[metaSHA256]; want != hex.EncodeToString(sum[:]) {
		return nil, fmt.Errorf("%w: s3 key %s: sha256 does not match the recorded digest", ErrCorrupt, key)
	}
	return data, nil
}
