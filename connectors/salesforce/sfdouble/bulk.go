package sfdouble

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// JobInfo is a Bulk API 2.0 ingest job as the API describes it.
type JobInfo struct {
	ID                     string  `json:"id"`
	Operation              string  `json:"operation"`
	Object                 string  `json:"object"`
	CreatedByID            string  `json:"createdById"`
	CreatedDate            string  `json:"createdDate"`
	SystemModstamp         string  `json:"systemModstamp"`
	State                  string  `json:"state"`
	ExternalIDFieldName    string  `json:"externalIdFieldName,omitempty"`
	ConcurrencyMode        string  `json:"concurrencyMode"`
	ContentType            string  `json:"contentType"`
	APIVersion             float64 `json:"apiVersion"`
	JobType                string  `json:"jobType"`
	ContentURL             string  `json:"contentUrl,omitempty"`
	LineEnding             string  `json:"lineEnding"`
	ColumnDelimiter        string  `json:"columnDelimiter"`
	NumberRecordsProcessed int64   `json:"numberRecordsProcessed"`
	NumberRecordsFailed    int64   `json:"numberRecordsFailed"`
	Retries                int64   `json:"retries"`
	TotalProcessingTime    int64   `json:"totalProcessingTime"`
	ErrorMessage           string  `json:"errorMessage,omitempty"`
}

type job struct {
	info        JobInfo
	data        []byte
	uploaded    bool
	header      []string
	success     [][]string // sf__Id, sf__Created, original columns
	failed      [][]string // sf__Id, sf__Error, original columns
	unprocessed [][]string
}

// Jobs returns the ingest jobs' infos.
func (s *Server) Jobs() []JobInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []JobInfo
	for _, j := range s.jobs {
		out = append(out, j.info)
	}
	return out
}

func (s *Server) bulk(w http.ResponseWriter, r *http.Request, version string, parts []string) {
	switch {
	case len(parts) == 0 && r.Method == http.MethodPost:
		s.count("bulk_create")
		s.bulkCreate(w, r, version)
	case len(parts) == 0 && r.Method == http.MethodGet:
		s.count("bulk_list")
		s.mu.Lock()
		recs := []JobInfo{}
		for _, j := range s.jobs {
			recs = append(recs, j.info)
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"done": true, "records": recs, "nextRecordsUrl": nil})
	case len(parts) == 1 && r.Method == http.MethodGet:
		s.count("bulk_poll")
		s.mu.Lock()
		j := s.jobs[parts[0]]
		var info JobInfo
		if j != nil {
			info = j.info
		}
		s.mu.Unlock()
		if j == nil {
			writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
			return
		}
		writeJSON(w, http.StatusOK, info)
	case len(parts) == 1 && r.Method == http.MethodPatch:
		s.bulkState(w, r, parts[0])
	case len(parts) == 1 && r.Method == http.MethodDelete:
		s.mu.Lock()
		delete(s.jobs, parts[0])
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case len(parts) == 2 && parts[1] == "batches" && r.Method == http.MethodPut:
		s.count("bulk_upload")
		s.bulkUpload(w, r, parts[0])
	case len(parts) == 2 && r.Method == http.MethodGet && (parts[1] == "successfulResults" || parts[1] == "failedResults" || parts[1] == "unprocessedrecords"):
		s.count("bulk_results")
		s.bulkResults(w, parts[0], parts[1])
	default:
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
	}
}

func (s *Server) bulkCreate(w http.ResponseWriter, r *http.Request, version string) {
	var req struct {
		Object              string `json:"object"`
		ExternalIDFieldName string `json:"externalIdFieldName"`
		ContentType         string `json:"contentType"`
		Operation           string `json:"operation"`
		LineEnding          string `json:"lineEnding"`
		ColumnDelimiter     string `json:"columnDelimiter"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "JSON_PARSER_ERROR", err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.objects[req.Object]
	switch {
	case st == nil:
		writeErr(w, http.StatusBadRequest, "NOT_FOUND", "sObject type '"+req.Object+"' is not supported")
		return
	case req.Operation != "upsert" && req.Operation != "insert" && req.Operation != "update" && req.Operation != "delete":
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : Invalid operation: "+req.Operation)
		return
	case req.Operation == "upsert" && (st.field(req.ExternalIDFieldName) == nil || !st.field(req.ExternalIDFieldName).ExternalID):
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : Field name provided, "+req.ExternalIDFieldName+" is not an External ID or indexed field for "+req.Object)
		return
	case req.ContentType != "" && req.ContentType != "CSV":
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : contentType must be CSV")
		return
	case req.LineEnding != "" && req.LineEnding != "LF":
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : the double supports lineEnding LF only")
		return
	case req.ColumnDelimiter != "" && req.ColumnDelimiter != "COMMA":
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : the double supports columnDelimiter COMMA only")
		return
	}
	s.jobSeq++
	id := newID("750", s.jobSeq)
	now := time.Now().UTC().Format("2006-01-02T15:04:05.000+0000")
	var v float64
	fmt.Sscan(version, &v)
	j := &job{info: JobInfo{
		ID: id, Operation: req.Operation, Object: req.Object, CreatedByID: "005xx000001Sv6eAAC",
		CreatedDate: now, SystemModstamp: now, State: "Open", ExternalIDFieldName: req.ExternalIDFieldName,
		ConcurrencyMode: "Parallel", ContentType: "CSV", APIVersion: v, JobType: "V2Ingest",
		ContentURL: "services/data/v" + version + "/jobs/ingest/" + id + "/batches", LineEnding: "LF", ColumnDelimiter: "COMMA",
	}}
	s.jobs[id] = j
	s.stats.BulkJobs++
	writeJSON(w, http.StatusOK, j.info)
}

func (s *Server) bulkUpload(w http.ResponseWriter, r *http.Request, id string) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/csv") {
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : Content-Type must be text/csv")
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, 150<<20+1))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "could not read the upload")
		return
	}
	if len(data) > 150<<20 {
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : upload exceeds 150 MB")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	switch {
	case j == nil:
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
		return
	case j.info.State != "Open":
		writeErr(w, http.StatusConflict, "INVALIDJOBSTATE", "InvalidJobState : Job is not open for uploads")
		return
	case j.uploaded:
		// Bulk API 2.0 takes one upload per job.
		writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : Found multiple contents for job: <"+id+">, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure you only do 'PUT' once on a given Job.")
		return
	}
	j.data, j.uploaded = data, true
	w.WriteHeader(http.StatusCreated)
}

func (s *Server) bulkState(w http.ResponseWriter, r *http.Request, id string) {
	var req struct {
		State string `json:"state"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "JSON_PARSER_ERROR", err.Error())
		return
	}
	switch req.State {
	case "UploadComplete":
		s.count("bulk_close")
	case "Aborted":
		s.count("bulk_abort")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
		return
	}
	switch {
	case req.State == "UploadComplete" && j.info.State == "Open":
		if !j.uploaded {
			writeErr(w, http.StatusBadRequest, "INVALIDJOB", "InvalidJob : No content uploaded for the job")
			return
		}
		j.info.State = "UploadComplete"
		go s.process(id)
	case req.State == "Aborted" && (j.info.State == "Open" || j.info.State == "UploadComplete"):
		j.info.State = "Aborted"
	default:
		writeErr(w, http.StatusBadRequest, "INVALIDJOBSTATE", "InvalidJobState : cannot change state from "+j.info.State+" to "+req.State)
		return
	}
	writeJSON(w, http.StatusOK, j.info)
}

// process runs a job after BulkDelay: rows are upserted one by one, in
// order.
func (s *Server) process(id string) {
	time.Sleep(s.cfg.BulkDelay)
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil || j.info.State != "UploadComplete" {
		return
	}
	j.info.State = "InProgress"
	st := s.objects[j.info.Object]
	rd := csv.NewReader(bytes.NewReader(j.data))
	rd.FieldsPerRecord = -1
	rows, err := rd.ReadAll()
	fail := func(msg string) {
		j.info.State = "Failed"
		j.info.ErrorMessage = msg
		for _, row := range rows[min(1, len(rows)):] {
			j.unprocessed = append(j.unprocessed, row)
		}
	}
	if err != nil || len(rows) == 0 {
		j.info.State = "Failed"
		j.info.ErrorMessage = "InvalidBatch : Failed to parse CSV"
		return
	}
	header := rows[0]
	j.header = header
	fields := make([]*Field, len(header))
	extCol := -1
	for i, h := range header {
		f := st.field(h)
		if f == nil {
			fail("InvalidBatch : Field name not found : " + h)
			return
		}
		fields[i] = f
		if f.Name == j.info.ExternalIDFieldName {
			extCol = i
		}
	}
	if extCol < 0 {
		fail("InvalidBatch : External ID field " + j.info.ExternalIDFieldName + " is missing from the header")
		return
	}
	perKey := map[string]int{}
	for _, row := range rows[1:] {
		if extCol < len(row) {
			perKey[row[extCol]]++
		}
	}
	for _, n := range perKey {
		s.stats.MaxKeyPerCall = max(s.stats.MaxKeyPerCall, n)
	}
	s.stats.BulkRecords += int64(len(rows) - 1)
	for _, row := range rows[1:] {
		failRow := func(code, msg string, fs ...string) {
			j.failed = append(j.failed, append([]string{"", code + ":" + msg + ":" + strings.Join(fs, ",") + " --"}, row...))
			j.info.NumberRecordsFailed++
			s.stats.RecordErrors[code]++
		}
		j.info.NumberRecordsProcessed++
		if len(row) != len(header) {
			failRow("INVALID_FIELD", "Row has a different number of columns than the header")
			continue
		}
		vals := map[string]any{}
		bad := false
		for i, cell := range row {
			v, skip, msg := convertCSV(fields[i], cell)
			if msg != "" {
				failRow("INVALID_FIELD", fmt.Sprintf("Failed to deserialize field at col %d. Due to, %s", i, msg), fields[i].Name)
				bad = true
				break
			}
			if !skip {
				vals[fields[i].Name] = v
			}
		}
		if bad {
			continue
		}
		if perKey[row[extCol]] > 1 {
			failRow("DUPLICATE_VALUE", "Duplicate external id specified: "+row[extCol], j.info.ExternalIDFieldName)
			continue
		}
		id, created, rerr := s.upsertLocked(st, j.info.ExternalIDFieldName, vals)
		if rerr != nil {
			failRow(rerr.StatusCode, rerr.Message, rerr.Fields...)
			continue
		}
		j.success = append(j.success, append([]string{id, fmt.Sprint(created)}, row...))
	}
	j.info.State = "JobComplete"
	j.info.TotalProcessingTime = time.Since(start).Milliseconds()
	j.info.SystemModstamp = time.Now().UTC().Format("2006-01-02T15:04:05.000+0000")
	s.stats.BulkCompleted++
	if s.cfg.ShuffleResults {
		s.rng.Shuffle(len(j.success), func(a, b int) { j.success[a], j.success[b] = j.success[b], j.success[a] })
		s.rng.Shuffle(len(j.failed), func(a, b int) { j.failed[a], j.failed[b] = j.failed[b], j.failed[a] })
	}
}

func (s *Server) bulkResults(w http.ResponseWriter, id, kind string) {
	s.mu.Lock()
	j := s.jobs[id]
	if j == nil {
		s.mu.Unlock()
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
		return
	}
	if j.info.State != "JobComplete" && j.info.State != "Failed" && j.info.State != "Aborted" {
		s.mu.Unlock()
		writeErr(w, http.StatusBadRequest, "INVALIDJOBSTATE", "InvalidJobState : job is not complete")
		return
	}
	header := j.header
	if header == nil {
		rd := csv.NewReader(bytes.NewReader(j.data))
		header, _ = rd.Read()
	}
	var rows [][]string
	var head []string
	switch kind {
	case "successfulResults":
		head, rows = append([]string{"sf__Id", "sf__Created"}, header...), j.success
	case "failedResults":
		head, rows = append([]string{"sf__Id", "sf__Error"}, header...), j.failed
	default:
		head, rows = header, j.unprocessed
		if j.info.State == "Aborted" && j.unprocessed == nil {
			rd := csv.NewReader(bytes.NewReader(j.data))
			all, _ := rd.ReadAll()
			if len(all) > 1 {
				rows = all[1:]
			}
		}
	}
	var buf bytes.Buffer
	cw := csv.NewWriter(&buf)
	_ = cw.Write(head)
	_ = cw.WriteAll(rows)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/csv")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}
