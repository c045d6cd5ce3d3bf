package lake

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// storage is where files go. Keys are slash-separated and relative to the
// lake's root. Put must be atomic: a reader (or a crash) sees either no
// object or the whole one, never a prefix of it.
type storage interface {
	Put(ctx context.Context, key string, data []byte) error
	// PutIfAbsent is Put that fails with errExists if key exists. It
	// fences a second writer of the same commit sequence number.
	PutIfAbsent(ctx context.Context, key string, data []byte) error
	// Get returns errNotFound for a missing key.
	Get(ctx context.Context, key string) ([]byte, error)
	// List returns the keys under prefix that sort after startAfter, in
	// lexical order, at most limit of them (limit <= 0: all).
	List(ctx context.Context, prefix, startAfter string, limit int) ([]string, error)
	Delete(ctx context.Context, key string) error
	// URI is the absolute location of key, for Iceberg (file:///... or s3://...).
	URI(key string) string
}

var (
	errNotFound = errors.New("not found")
	errExists   = errors.New("already exists")
)

// localStorage keeps the lake in a directory.
type localStorage struct{ root string }

func (l *localStorage) file(key string) string { return filepath.Join(l.root, filepath.FromSlash(key)) }

// Put writes to a temporary file in the same directory, syncs it, renames
// it over the key and syncs the directory: the rename is atomic, so the
// key holds either the old or the whole new content, also after a crash.
func (l *localStorage) Put(_ context.Context, key string, data []byte) error {
	tmp, err := l.writeTemp(key, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, l.file(key)); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(l.file(key)))
}

// PutIfAbsent links the synced temporary file to the key: link(2) fails if
// the key exists, so two writers cannot both create it.
func (l *localStorage) PutIfAbsent(_ context.Context, key string, data []byte) error {
	tmp, err := l.writeTemp(key, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, l.file(key)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errExists
		}
		return err
	}
	return syncDir(filepath.Dir(l.file(key)))
}

func (l *localStorage) writeTemp(key string, data []byte) (string, error) {
	dst := l.file(key)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".tmp-"+filepath.Base(dst)+"-*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (l *localStorage) Get(_ context.Context, key string) ([]byte, error) {
	b, err := os.ReadFile(l.file(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotFound
	}
	return b, err
}

func (l *localStorage) List(_ context.Context, prefix, startAfter string, limit int) ([]string, error) {
	// Prefixes used here are directories ("_plume/commits/").
	dir := l.file(strings.TrimSuffix(prefix, "/"))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		k := path.Join(strings.TrimSuffix(prefix, "/"), e.Name())
		if k > startAfter {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func (l *localStorage) Delete(_ context.Context, key string) error {
	err := os.Remove(l.file(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (l *localStorage) URI(key string) string {
	return "file://" + filepath.ToSlash(l.file(key))
}

// s3Storage keeps the lake in an S3 bucket. A PUT is atomic by S3's
// semantics: the object appears whole or not at all.
type s3Storage struct {
	cl     *s3.Client
	bucket string
	prefix string // "" or "a/b"
}

func newS3Storage(s *settings) (*s3Storage, error) {
	opts := s3.Options{
		Region:       s.s3.Region,
		UsePathStyle: s.pathStyle,
		// Only send and check checksums the API requires: S3-compatible
		// servers differ in which of the newer checksum headers they know.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if s.s3.Endpoint != "" {
		opts.BaseEndpoint = aws.String(s.s3.Endpoint)
	}
	switch {
	case s.s3.AccessKeyID != "":
		opts.Credentials = credentials.NewStaticCredentialsProvider(s.s3.AccessKeyID, s.s3.SecretAccessKey.Reveal(), s.s3.SessionToken.Reveal())
	case os.Getenv("AWS_ACCESS_KEY_ID") != "":
		opts.Credentials = credentials.NewStaticCredentialsProvider(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), os.Getenv("AWS_SESSION_TOKEN"))
	default:
		return nil, errors.New("s3: no credentials: set s3.access_key_id and s3.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	return &s3Storage{cl: s3.New(opts), bucket: s.bucket, prefix: s.prefix}, nil
}

func (s *s3Storage) key(k string) string {
	if s.prefix == "" {
		return k
	}
	return s.prefix + "/" + k
}

func (s *s3Storage) Put(ctx context.Context, key string, data []byte) error {
	_, err := s.cl.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &s.bucket, Key: aws.String(s.key(key)), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	})
	return s.wrap("put", key, err)
}

func (s *s3Storage) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	_, err := s.cl.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &s.bucket, Key: aws.String(s.key(key)), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), IfNoneMatch: aws.String("*"),
	})
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) && (re.HTTPStatusCode() == http.StatusPreconditionFailed || re.HTTPStatusCode() == http.StatusConflict) {
		return errExists
	}
	return s.wrap("put", key, err)
}

func (s *s3Storage) Get(ctx context.Context, key string) ([]byte, error) {
	out, err := s.cl.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: aws.String(s.key(key))})
	if err != nil {
		var nsk *s3types.NoSuchKey
		var re interface{ HTTPStatusCode() int }
		if errors.As(err, &nsk) || (errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound) {
			return nil, errNotFound
		}
		return nil, s.wrap("get", key, err)
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

func (s *s3Storage) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, error) {
	in := &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String(s.key(prefix))}
	if startAfter != "" {
		in.StartAfter = aws.String(s.key(startAfter))
	}
	var out []string
	p := s3.NewListObjectsV2Paginator(s.cl, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.wrap("list", prefix, err)
		}
		for _, o := range page.Contents {
			k := strings.TrimPrefix(aws.ToString(o.Key), s.key(""))
			if s.prefix != "" {
				k = strings.TrimPrefix(aws.ToString(o.Key), s.prefix+"/")
			}
			out = append(out, k)
			if limit > 0 && len(out) >= limit {
				return out, nil
			}
		}
	}
	return out, nil
}

func (s *s3Storage) Delete(ctx context.Context, key string) error {
	_, err := s.cl.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: aws.String(s.key(key))})
	return s.wrap("delete", key, err)
}

func (s *s3Storage) URI(key string) string { return "s3://" + s.bucket + "/" + s.key(key) }

// wrap names the operation and object; AWS errors carry no credentials.
// Authentication failures are permanent for the caller to decide.
func (s *s3Storage) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return &s3Error{op: op, uri: s.URI(key), code: ae.ErrorCode(), err: err}
	}
	return fmt.Errorf("s3 %s %s: %w", op, s.URI(key), err)
}

type s3Error struct {
	op, uri, code string
	err           error
}

func (e *s3Error) Error() string { return fmt.Sprintf("s3 %s %s: %v", e.op, e.uri, e.err) }
func (e *s3Error) Unwrap() error { return e.err }

// permanentS3 reports errors that retrying cannot fix.
func permanentS3(err error) bool {
	var e *s3Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AllAccessDisabled":
		return true
	}
	return false
}
