#include "tiering/ssd/slab_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace kvtier {
namespace {

absl::Status Errno(int err, std::string_view what, const std::string& path) {
  const std::string msg = absl::StrFormat("%s %s: %s", what, path, std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

}  // namespace

std::string SlabFile::FileName(uint32_t id) { return absl::StrFormat("slab-%06u.kvt", id); }

bool SlabFile::ParseFileName(const std::string& name, uint32_t* id) {
  unsigned v = 0;
  char tail = 0;
  if (name.size() != 15 || std::sscanf(name.c_str(), "slab-%6u.kv%c", &v, &tail) != 2 || tail != 't') return false;
  *id = v;
  return true;
}

absl::StatusOr<std::shared_ptr<SlabFile>> SlabFile::Open(const std::string& path, uint32_t id, uint64_t bytes) {
  bool direct = true;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0640);
  if (fd < 0 && errno == EINVAL) {  // the filesystem refuses O_DIRECT
    direct = false;
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  }
  if (fd < 0) return Errno(errno, "open", path);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Errno(err, "fstat", path);
  }
  if (static_cast<uint64_t>(st.st_size) > bytes && ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    ::close(fd);
    return Errno(err, "ftruncate", path);
  }
  // Allocate every block now: a full filesystem is found here, at open or growth, not in the write path.
  if (fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    if (err != EOPNOTSUPP || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      ::close(fd);
      if (st.st_size == 0) ::unlink(path.c_str());  // do not leave a half-made slab behind
      return Errno(err, "fallocate", path);
    }
  }
  return std::shared_ptr<SlabFile>(new SlabFile(path, fd, id, bytes, direct));
}

SlabFile::~SlabFile() {
  ::close(fd_);
  if (delete_on_close_) ::unlink(path_.c_str());
}

}  // namespace kvtier
