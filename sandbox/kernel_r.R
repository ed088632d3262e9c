# Persistent R kernel: code on KERNEL_CTRL_FD as "<bytes>\n<code>", events on KERNEL_EVENT_FD as JSON lines,
# output on fds 1 and 2 (R flushes each line). Plots go to a png device and are announced as files; the agent sends
# them on as PNG data and acks, after which the file is removed. Needs only base R.
ev_fd <- Sys.getenv("KERNEL_EVENT_FD")
ctrl_fd <- Sys.getenv("KERNEL_CTRL_FD")
Sys.unsetenv(c("KERNEL_EVENT_FD", "KERNEL_CTRL_FD"))
events <- file(paste0("/proc/self/fd/", ev_fd), open = "wb", raw = TRUE)
ctrl <- file(paste0("/proc/self/fd/", ctrl_fd), open = "rb", raw = TRUE)
try(writeLines("1000", "/proc/self/oom_score_adj"), silent = TRUE) # the OOM killer should pick the kernel, not the agent
plot_dir <- tempfile("rplots-")
dir.create(plot_dir, mode = "0755")
Sys.chmod(plot_dir, "0755") # the agent (root, no DAC override) reads the PNGs

json_str <- function(s) {
  s <- enc2utf8(paste(s, collapse = "\n"))
  for (pair in list(c("\\", "\\\\"), c("\"", "\\\""), c("\n", "\\n"), c("\r", "\\r"), c("\t", "\\t"))) {
    s <- gsub(pair[1], pair[2], s, fixed = TRUE)
  }
  paste0("\"", gsub("[\001-\037]", " ", s), "\"")
}

emit <- function(..., wait = FALSE) {
  fields <- list(...)
  flush(stdout())
  flush(stderr())
  line <- paste0("{", paste0("\"", names(fields), "\":", unlist(fields), collapse = ","), "}\n")
  writeBin(charToRaw(enc2utf8(line)), events)
  flush(events)
  if (wait) readLines(ctrl, n = 1) # the agent's ack: what is printed next comes after this event
}

report <- function(name, value, call = NULL) {
  trace <- if (is.null(call)) character() else paste0("Error in ", paste(deparse(call, nlines = 1), collapse = ""), " : ", value, "\n")
  emit(type = json_str("error"), name = json_str(name), value = json_str(value),
       traceback = paste0("[", paste(vapply(trace, json_str, ""), collapse = ","), "]"))
}

flush_plots <- function() {
  while (dev.cur() > 1) dev.off()
  for (f in sort(list.files(plot_dir, full.names = TRUE))) {
    Sys.chmod(f, "0644")
    emit(type = json_str("display"), path = json_str(f), wait = TRUE)
    unlink(f)
  }
}

run <- function(code) {
  status <- "ok"
  png(file.path(plot_dir, "plot-%03d.png"), width = 640, height = 480, type = "cairo")
  tryCatch(
    withCallingHandlers({
      for (e in parse(text = code, keep.source = FALSE)) {
        r <- withVisible(eval(e, envir = globalenv()))
        if (r$visible) print(r$value)
      }
    }, warning = function(w) {
      message("Warning message:\n", conditionMessage(w))
      invokeRestart("muffleWarning")
    }),
    error = function(err) {
      status <<- "error"
      report(if (inherits(err, "simpleError")) "Error" else class(err)[1], conditionMessage(err), conditionCall(err))
    },
    interrupt = function(i) {
      status <<- "error"
      report("KeyboardInterrupt", "interrupted")
    }
  )
  tryCatch(flush_plots(), error = function(err) report("PlotError", conditionMessage(err)))
  emit(type = json_str("end"), status = json_str(status))
}

emit(type = json_str("ready"))
repeat {
  header <- tryCatch(readLines(ctrl, n = 1), interrupt = function(i) "") # an interrupt between runs is ignored
  if (length(header) == 0) quit(save = "no", status = 0)
  if (!nzchar(header)) next
  code <- readChar(ctrl, as.integer(header), useBytes = TRUE)
  Encoding(code) <- "UTF-8"
  run(code)
}
