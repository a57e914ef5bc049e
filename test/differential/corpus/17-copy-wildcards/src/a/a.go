pa
