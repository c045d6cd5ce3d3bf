package salesforce

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

var queryEscape = url.QueryEscape

// maxUpload is the most CSV bytes per job: Salesforce takes 150 MB per
// upload, and recommends 100 MB because of its base64 conversion.
const maxUpload = 100 << 20

// jobInfo is the part of a Bulk API 2.0 JobInfo the target reads.
type jobInfo struct {
	ID                  string `json:"id"`
	State               string `json:"state"`
	Object              string `json:"object"`
	Operation           string `json:"operation"`
	ExternalIDFieldName string `json:"externalIdFieldName"`
	ContentURL          string `json:"contentUrl"`
	ErrorMessage        string `json:"errorMessage"`
	Processed           int64  `json:"numberRecordsProcessed"`
	Failed              int64  `json:"numberRecordsFailed"`
}

func terminal(state string) bool {
	return state == "JobComplete" || state == "Failed" || state == "Aborted"
}

// bulkUpsert upserts ws through Bulk API 2.0 jobs (one per 100 MB of CSV):
// create the job, PUT the CSV, PATCH state UploadComplete, poll until the
// job is JobComplete, Failed or Aborted, then read successfulResults,
// failedResults and (for a failed or aborted job) unprocessedrecords. Rows
// are matched back to messages by their external ID, which is unique
// within a round (result rows come in no particular order).
//
// Invariant: once a job may process (UploadComplete was sent), the target
// waits for it to finish before anything else is written, even across
// retries: the job id is kept in t.jobs and resumed by the next Apply of
// the batch. Otherwise a stale job could complete after a later batch and
// overwrite newer values. A job left Open (its upload never completed)
// cannot process and is aborted.
func (t *Target) bulkUpsert(ctx context.Context, round int, ws []*work, res *roundResult) {
	byExt := make(map[string]*work, len(ws))
	for _, w := range ws {
		byExt[w.ext] = w
	}
	if id := t.jobs[round]; id != "" {
		// A job of an earlier attempt at this batch: settle it first.
		info, err := t.jobInfo(ctx, id)
		if err != nil {
			res.fail(err)
			return
		}
		if info.State == "Open" {
			if _, err := t.setJobState(ctx, id, "Aborted"); err != nil {
				res.fail(err)
				return
			}
			delete(t.jobs, round)
		} else {
			t.finishJob(ctx, round, id, byExt, res)
			return
		}
	}
	csvs, err := t.buildCSV(ws)
	if err != nil {
		res.fail(err)
		return
	}
	for _, data := range csvs {
		if res.stopped() || ctx.Err() != nil {
			return
		}
		body, _ := json.Marshal(map[string]string{
			"object": t.set.object, "externalIdFieldName": t.set.externalID,
			"contentType": "CSV", "operation": "upsert", "lineEnding": "LF",
		})
		_, _, out, err := t.c.call(ctx, http.MethodPost, "jobs/ingest", body, "application/json", true)
		if err != nil {
			res.fail(err)
			return
		}
		var info jobInfo
		if err := json.Unmarshal(out, &info); err != nil || info.ID == "" {
			res.fail(fmt.Errorf("salesforce: Bulk job create: unexpected answer"))
			return
		}
		t.stats.BulkJobs.Add(1)
		// From here on the job is remembered: a retry resumes or aborts it.
		t.jobs[round] = info.ID
		content := info.ContentURL
		if content == "" {
			content = "jobs/ingest/" + info.ID + "/batches"
		}
		if strings.HasPrefix(content, "services/") {
			content = "/" + content
		}
		if _, _, _, err := t.c.call(ctx, http.MethodPut, content, data, "text/csv", true); err != nil {
			res.fail(err)
			return
		}
		if _, err := t.setJobState(ctx, info.ID, "UploadComplete"); err != nil {
			res.fail(err)
			return
		}
		t.log.Debug("salesforce Bulk API job started", "target", t.name, "job", info.ID, "bytes", len(data))
		if !t.finishJob(ctx, round, info.ID, byExt, res) {
			return
		}
	}
}

// finishJob polls a job to its end and reads its results; false when the
// round cannot go on.
func (t *Target) finishJob(ctx context.Context, round int, id string, byExt map[string]*work, res *roundResult) bool {
	info, err := t.pollJob(ctx, id)
	if err != nil {
		res.fail(err)
		return false
	}
	settled := map[string]bool{}
	read := func(kind string, fn func(ext string, row map[string]string)) error {
		_, _, out, err := t.c.call(ctx, http.MethodGet, "jobs/ingest/"+id+"/"+kind+"/", nil, "", true)
		if err != nil {
			return err
		}
		rd := csv.NewReader(bytes.NewReader(out))
		rd.FieldsPerRecord = -1
		head, err := rd.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("salesforce: Bulk job %s %s: %v", id, kind, err)
		}
		extCol := -1
		for i, h := range head {
			if strings.EqualFold(h, t.set.externalID) {
				extCol = i
			}
		}
		if extCol < 0 {
			return fmt.Errorf("salesforce: Bulk job %s %s: no %s column", id, kind, t.set.externalID)
		}
		for {
			rec, err := rd.Read()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("salesforce: Bulk job %s %s: %v", id, kind, err)
			}
			row := map[string]string{}
			for i, h := range head {
				if i < len(rec) {
					row[h] = rec[i]
				}
			}
			if extCol < len(rec) {
				fn(rec[extCol], row)
			}
		}
	}
	var retry error
	if err := read("successfulResults", func(ext string, _ map[string]string) {
		if w := byExt[ext]; w != nil && !settled[ext] {
			settled[ext] = true
			res.ok(w.idx)
			t.stats.BulkRecords.Add(1)
		}
	}); err != nil {
		res.fail(err)
		return false
	}
	if err := read("failedResults", func(ext string, row map[string]string) {
		w := byExt[ext]
		if w == nil || settled[ext] {
			return
		}
		e := parseBulkError(row["sf__Error"])
		if retryableStatus(e.StatusCode) {
			if retry == nil {
				retry = t.recordError(ext, e)
			}
			return
		}
		settled[ext] = true
		res.reject(w.idx, t.recordError(ext, e))
	}); err != nil {
		res.fail(err)
		return false
	}
	delete(t.jobs, round) // settled: a retry sends what is left in a new job
	if info.State != "JobComplete" {
		err := fmt.Errorf("salesforce: Bulk job %s ended %s: %s", id, info.State, t.c.red.scrub(info.ErrorMessage))
		if info.State == "Failed" && len(settled) == 0 && strings.HasPrefix(info.ErrorMessage, "InvalidBatch") {
			// The whole upload was refused (a field name, the CSV): no
			// retry can succeed.
			res.fail(errPermanent(err))
			return false
		}
		res.fail(err)
		return false
	}
	if retry != nil {
		res.fail(retry)
		return false
	}
	for ext := range byExt {
		if !settled[ext] {
			res.fail(fmt.Errorf("salesforce: Bulk job %s did not report on %s=%s", id, t.set.externalID, ext))
			return false
		}
	}
	return true
}

// parseBulkError reads an sf__Error cell, "STATUS_CODE:message:fields --".
func parseBulkError(s string) sfError {
	s = strings.TrimSuffix(strings.TrimSpace(s), "--")
	s = strings.TrimSpace(s)
	code, rest, ok := strings.Cut(s, ":")
	if !ok {
		return sfError{StatusCode: "UNKNOWN", Message: s}
	}
	msg, fields := rest, ""
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		msg, fields = rest[:i], rest[i+1:]
	}
	e := sfError{StatusCode: code, Message: msg}
	if f := strings.TrimSpace(fields); f != "" {
		e.Fields = strings.Split(f, ",")
	}
	return e
}

func (t *Target) jobInfo(ctx context.Context, id string) (*jobInfo, error) {
	_, _, out, err := t.c.call(ctx, http.MethodGet, "jobs/ingest/"+id, nil, "", true)
	if err != nil {
		return nil, err
	}
	var info jobInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("salesforce: Bulk job %s: %v", id, err)
	}
	return &info, nil
}

func (t *Target) setJobState(ctx context.Context, id, state string) (*jobInfo, error) {
	body, _ := json.Marshal(map[string]string{"state": state})
	_, _, out, err := t.c.call(ctx, http.MethodPatch, "jobs/ingest/"+id, body, "application/json", true)
	if err != nil {
		return nil, err
	}
	var info jobInfo
	_ = json.Unmarshal(out, &info)
	return &info, nil
}

// pollJob polls until the job ends: first after 250 ms, then doubling up
// to bulk_poll_interval. It never gives up on a job that may still write
// (see bulkUpsert); only ctx ends it.
func (t *Target) pollJob(ctx context.Context, id string) (*jobInfo, error) {
	wait := 250 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		info, err := t.jobInfo(ctx, id)
		if err != nil {
			var ob errOverBudget
			if classify(err) == kPermanent || errors.As(err, &ob) {
				return nil, err
			}
			// Transient: keep polling.
			t.log.Warn("salesforce Bulk job poll failed; polling again", "target", t.name, "job", id, "err", err)
		} else if terminal(info.State) {
			return info, nil
		}
		wait = min(wait*2, t.set.bulkPoll)
	}
}

// waitForJobs waits for this object's upsert jobs (on the same external ID
// field) that are still processing: a run that crashed while polling one
// must not have it complete after newer changes were written.
func (t *Target) waitForJobs(ctx context.Context) error {
	if t.set.bulkThreshold == 0 {
		return nil
	}
	next := "jobs/ingest?jobType=V2Ingest"
	var pending []string
	for next != "" {
		_, _, out, err := t.c.call(ctx, http.MethodGet, next, nil, "", true)
		if err != nil {
			return err
		}
		var list struct {
			Done           bool      `json:"done"`
			NextRecordsURL string    `json:"nextRecordsUrl"`
			Records        []jobInfo `json:"records"`
		}
		if err := json.Unmarshal(out, &list); err != nil {
			return fmt.Errorf("salesforce: listing Bulk jobs: %v", err)
		}
		for _, j := range list.Records {
			if j.Object == t.set.object && j.Operation == "upsert" && strings.EqualFold(j.ExternalIDFieldName, t.set.externalID) &&
				(j.State == "UploadComplete" || j.State == "InProgress") {
				pending = append(pending, j.ID)
			}
		}
		next = ""
		if !list.Done && list.NextRecordsURL != "" {
			next = list.NextRecordsURL
		}
	}
	for _, id := range pending {
		t.log.Info("waiting for a Bulk API job of an earlier run to finish", "target", t.name, "job", id)
		if _, err := t.pollJob(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// buildCSV renders ws as CSV files of at most maxUpload bytes: the
// external ID first, then every field any record sets, sorted. A record
// without a field leaves its cell empty (the field is not changed); null
// is #N/A.
func (t *Target) buildCSV(ws []*work) ([][]byte, error) {
	cols := map[string]bool{}
	var ext string
	for _, w := range ws {
		for k := range w.rec.fields {
			if strings.EqualFold(k, t.set.externalID) {
				ext = k
				continue
			}
			cols[k] = true
		}
	}
	header := append([]string{ext}, sortedKeys(cols)...)
	var out [][]byte
	var buf bytes.Buffer
	cw := csv.NewWriter(&buf)
	start := func() {
		buf.Reset()
		_ = cw.Write(header)
	}
	start()
	rows := 0
	row := make([]string, len(header))
	for _, w := range ws {
		for i, h := range header {
			v, ok := w.rec.fields[h]
			if !ok {
				row[i] = ""
				continue
			}
			row[i] = cell(v)
		}
		before := buf.Len()
		if err := cw.Write(row); err != nil {
			return nil, err
		}
		cw.Flush()
		if buf.Len() > maxUpload && rows > 0 {
			last := append([]byte(nil), buf.Bytes()[before:]...)
			buf.Truncate(before)
			out = append(out, append([]byte(nil), buf.Bytes()...))
			start()
			cw.Flush()
			buf.Write(last)
			rows = 0
		}
		rows++
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return nil, err
	}
	out = append(out, append([]byte(nil), buf.Bytes()...))
	return out, nil
}
