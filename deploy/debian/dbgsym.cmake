# CPack post-build script: the virtnode-dbgsym package beside the .deb
execute_process(COMMAND bash ${CPACK_VN_SOURCE_DIR}/deploy/debian/mkdbgsym.sh
                        ${CPACK_VN_BIN_DIR} ${CPACK_PACKAGE_DIRECTORY} ${CPACK_PACKAGE_VERSION}
                        ${CPACK_PACKAGE_CONTACT}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the dbgsym package failed")
endif()
