package backfill

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/syncflow/syncflow/internal/redact"
)

// Source is where the backfill reads an entity, in key order.
type Source interface {
	// Count returns how many rows entity has.
	Count(ctx context.Context, entity string) (int64, error)
	// Page returns up to limit rows after cursor ("" for the first page) and the
	// cursor of the last row returned; more is false on the last page.
	Page(ctx context.Context, entity, cursor string, limit int) (rows []SourceRow, next string, more bool, err error)
}

// SourceRow is one row of the source: its rowversion as sent and its fields.
type SourceRow struct {
	RowVersion json.RawMessage `json:"rowversion"`
	Data       map[string]any  `json:"data"`
}

// HTTPSource reads APISmith's HTTP API (see the README):
// GET {BaseURL}/api/v1/entities/{entity}/count,
// GET {BaseURL}/api/v1/entities/{entity}/rows?after=CURSOR&limit=N[&fields=F1,F2] and
// POST {BaseURL}/api/v1/entities/{entity}/lookup with {"keys": [{FIELD: VALUE}]}.
type HTTPSource struct {
	// BaseURL is the API's address, e.g. http://apismith:8080.
	BaseURL string
	// Token, when set, is sent as a bearer token.
	Token string
	// Timeout bounds one request (default 30s).
	Timeout time.Duration
	// RetryFor bounds the retries of one request after a 5xx answer, a network
	// error or a malformed page (default 2m); a 4xx answer is not retried.
	RetryFor time.Duration
	// Client is the HTTP client (default: a new one).
	Client *http.Client
	// OnRetry, when set, learns of each failed request that will be tried again:
	// what failed, when the next attempt is, and when the retries end.
	OnRetry func(Retry)
}

// Retry describes a failed request to the source that will be tried again.
type Retry struct {
	URL    string
	Err    error
	Next   time.Time // the next attempt
	GiveUp time.Time // when the retries end, if the source stays down
}

// ErrSource marks an answer of the source that retrying will not change (4xx).
var ErrSource = errors.New("source")

type httpStatusError struct {
	code int
	body string
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.code, strings.TrimSpace(e.body))
}

func (s HTTPSource) withDefaults() HTTPSource {
	s.Timeout = cmp.Or(s.Timeout, 30*time.Second)
	s.RetryFor = cmp.Or(s.RetryFor, 2*time.Minute)
	if s.Client == nil {
		s.Client = &http.Client{}
	}
	return s
}

// Validate says what is wrong with the source's settings.
func (s HTTPSource) Validate() error {
	var errs []error
	if u, err := url.Parse(s.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("the APISmith URL %q is not an http(s)://HOST address", redact.String(s.BaseURL)))
	}
	if s.Timeout < 0 || s.RetryFor < 0 {
		errs = append(errs, errors.New("the APISmith timeout and retry period must not be negative"))
	}
	return errors.Join(errs...)
}

// request sends one request to the API, with query q and, when body is not nil,
// body as JSON, and decodes the answer into into. It retries 5xx answers, network
// errors and malformed answers for RetryFor, each attempt bounded by Timeout; a
// 4xx answer is an ErrSource, not retried.
func (s *HTTPSource) request(ctx context.Context, method, path string, q url.Values, body, into any) error {
	if err := s.Validate(); err != nil {
		return backoff.Permanent(err)
	}
	cfg := s.withDefaults()
	timeout, retryFor, client := cfg.Timeout, cfg.RetryFor, cfg.Client
	u := strings.TrimRight(s.BaseURL, "/") + path
	// What errors and retries show: the address without its password.
	shown := u
	if parsed, err := url.Parse(u); err == nil {
		shown = parsed.Redacted()
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("encoding the request to %s: %w", shown, err)
		}
	}
	attempt := func() error {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var rd io.Reader
		if payload != nil {
			rd = bytes.NewReader(payload)
		}
		req, err := http.NewRequestWithContext(rctx, method, u, rd)
		if err != nil {
			return backoff.Permanent(err)
		}
		req.Header.Set("Accept", "application/json")
		if payload != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if s.Token != "" {
			req.Header.Set("Authorization", "Bearer "+s.Token)
		}
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return backoff.Permanent(ctx.Err())
			}
			return err // network: retry
		}
		defer resp.Body.Close()
		answer, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
		if err != nil {
			return err
		}
		switch {
		case resp.StatusCode >= 500:
			return &httpStatusError{resp.StatusCode, string(answer)}
		case resp.StatusCode >= 400:
			return backoff.Permanent(fmt.Errorf("%w: %s answered %w", ErrSource, shown, &httpStatusError{resp.StatusCode, string(answer)}))
		}
		dec := json.NewDecoder(bytes.NewReader(answer))
		dec.UseNumber()
		if err := dec.Decode(into); err != nil {
			return fmt.Errorf("malformed page from %s: %v", shown, err) // truncated bodies heal: retry
		}
		return nil
	}
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(10*time.Second), backoff.WithMaxElapsedTime(retryFor)), ctx)
	start := time.Now()
	notify := func(err error, wait time.Duration) {
		if s.OnRetry != nil {
			now := time.Now()
			s.OnRetry(Retry{URL: shown, Err: err, Next: now.Add(wait), GiveUp: start.Add(retryFor)})
		}
	}
	if err := backoff.RetryNotify(attempt, bo, notify); err != nil {
		if errors.Is(err, ErrSource) || errors.Is(err, context.Canceled) {
			return err
		}
		return fmt.Errorf("%s: giving up after retrying for %v (is APISmith there? --apismith-url or SYNCFLOW_APISMITH_URL says where): %w", shown, retryFor, err)
	}
	return nil
}

// Count implements Source.
func (s *HTTPSource) Count(ctx context.Context, entity string) (int64, error) {
	var out struct {
		Count *int64 `json:"count"`
	}
	if err := s.request(ctx, http.MethodGet, "/api/v1/entities/"+url.PathEscape(entity)+"/count", nil, nil, &out); err != nil {
		return 0, err
	}
	if out.Count == nil || *out.Count < 0 {
		return 0, fmt.Errorf("%w: the count of %s has no count", ErrSource, entity)
	}
	return *out.Count, nil
}

// Page implements Source.
func (s *HTTPSource) Page(ctx context.Context, entity, cursor string, limit int) ([]SourceRow, string, bool, error) {
	return s.PageFields(ctx, entity, cursor, limit, nil)
}

// PageFields is Page asking only for the given fields of each row (as named in
// the rows' data, e.g. PART_NO); nil or empty asks for whole rows. A source that
// ignores the projection and sends more fields is fine; every row still needs a
// rowversion and data.
func (s *HTTPSource) PageFields(ctx context.Context, entity, cursor string, limit int, fields []string) ([]SourceRow, string, bool, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if cursor != "" {
		q.Set("after", cursor)
	}
	if len(fields) > 0 {
		q.Set("fields", strings.Join(fields, ","))
	}
	var page struct {
		Rows       []SourceRow `json:"rows"`
		NextCursor *string     `json:"next_cursor"`
	}
	if err := s.request(ctx, http.MethodGet, "/api/v1/entities/"+url.PathEscape(entity)+"/rows", q, nil, &page); err != nil {
		return nil, "", false, err
	}
	for i, r := range page.Rows {
		if len(r.RowVersion) == 0 || r.Data == nil {
			return nil, "", false, fmt.Errorf("%w: row %d of the page after %q has no rowversion or data", ErrSource, i, cursor)
		}
	}
	if page.NextCursor == nil {
		return page.Rows, "", false, nil
	}
	return page.Rows, *page.NextCursor, true, nil
}

// Lookup returns the live rows of entity with the given business keys: each key
// maps every key field of the entity (e.g. {"ORDER_NO": "WO00000001",
// "OPERATION_NO": 10}) to its value, compared as text by the source. The rows come
// in the order of keys; a key the source does not have (or deleted) is simply
// absent. The source caps the keys of one request (APISmith: at most its page
// limit, 5000 by default), so callers send large sets in batches. No keys, no
// request. Retries, timeout and token are Page's.
func (s *HTTPSource) Lookup(ctx context.Context, entity string, keys []map[string]any) ([]SourceRow, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	var out struct {
		Rows []SourceRow `json:"rows"`
	}
	body := map[string]any{"keys": keys}
	if err := s.request(ctx, http.MethodPost, "/api/v1/entities/"+url.PathEscape(entity)+"/lookup", nil, body, &out); err != nil {
		return nil, err
	}
	for i, r := range out.Rows {
		if len(r.RowVersion) == 0 || r.Data == nil {
			return nil, fmt.Errorf("%w: row %d of the lookup of %d %s keys has no rowversion or data", ErrSource, i, len(keys), entity)
		}
	}
	return out.Rows, nil
}
